//! The burn ViT against Hugging Face transformers (PyTorch) on the committed fixtures of
//! `tests/fixtures/` (made by `tests/fixtures/make_fixtures.py`, transformers 5.24 / torch 2.15).
//!
//! Tolerances: logits and hidden states within 1e-4 absolute on exact pixel values, attention
//! probabilities within 1e-5. Through the whole image pipeline the softmax probabilities agree
//! within 2e-3 and the top-1 is the same: JPEG decoders (zune-jpeg vs libjpeg-turbo) and resamplers
//! (fast_image_resize vs Pillow) differ by up to 4 grey levels on the photos and 11 on the sharp
//! edges of `wide.png`, and the tiny random fixtures amplify that: the largest differences seen are
//! 1.5e-3 (deit, `wide.png`) and 1.3e-3 (dinov2, `church.jpg`); the other ten cases stay under 6e-4.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData, activation::softmax};
use safetensors::SafeTensors;
use vitrine_model::decode::decode_image;
use vitrine_model::{PreprocessConfig, load_safetensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One tensor of an `expected.safetensors`, as f32 values and shape.
fn expected(file: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let view = file.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
    let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (values, view.shape().to_vec())
}

fn tensor<const D: usize>(file: &SafeTensors, name: &str, device: &Device) -> Tensor<D> {
    let (values, shape) = expected(file, name);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Largest absolute difference, after checking shapes agree.
fn max_diff<const D: usize>(ours: Tensor<D>, theirs: (Vec<f32>, Vec<usize>)) -> f32 {
    assert_eq!(ours.dims().to_vec(), theirs.1, "shape");
    let ours = ours.into_data().try_to_vec::<f32>().unwrap();
    ours.iter().zip(&theirs.0).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn load(name: &str, device: &Device) -> vitrine_model::Loaded {
    let dir = fixtures().join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    load_safetensors(&config, &read(&dir.join("model.safetensors")), device)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Logits, hidden states and attentions on fixed pixels, at the trained size and two non-square sizes.
fn check_exact(model_dir: &str, expected_dir: &str) {
    let device = Device::flex();
    let loaded = load(model_dir, &device);
    let bytes = read(&fixtures().join(expected_dir).join("expected.safetensors"));
    let file = SafeTensors::deserialize(&bytes).unwrap();

    let out = loaded.model.forward_with_attentions(tensor(&file, "pixel_values", &device));
    let hidden = max_diff(out.last_hidden_state, expected(&file, "last_hidden_state"));
    assert!(hidden <= 1e-4, "{model_dir}: last_hidden_state differs by {hidden}");
    for (i, probs) in out.attentions.into_iter().enumerate() {
        let diff = max_diff(probs, expected(&file, &format!("attentions.{i}")));
        assert!(diff <= 1e-5, "{model_dir}: attentions.{i} differ by {diff}");
    }
    if loaded.model.has_head() {
        let diff = max_diff(out.logits.unwrap(), expected(&file, "logits"));
        assert!(diff <= 1e-4, "{model_dir}: logits differ by {diff}");
    }
    for case in ["ns", "ns2"] {
        let pixels = tensor(&file, &format!("{case}.pixel_values"), &device);
        let hidden = loaded.model.forward_features(pixels);
        let diff = max_diff(hidden.clone(), expected(&file, &format!("{case}.last_hidden_state")));
        assert!(diff <= 1e-4, "{model_dir}: {case}.last_hidden_state differs by {diff}");
        if loaded.model.has_head() {
            let diff = max_diff(loaded.model.forward_head(hidden), expected(&file, &format!("{case}.logits")));
            assert!(diff <= 1e-4, "{model_dir}: {case}.logits differ by {diff}");
        }
    }
}

#[test]
fn vit_matches_transformers() {
    check_exact("vit", "vit");
}

#[test]
fn deit_with_teacher_matches_transformers() {
    check_exact("deit", "deit");
}

#[test]
fn dinov2_classifier_matches_transformers() {
    check_exact("dinov2", "dinov2");
}

#[test]
fn dinov2_backbone_matches_transformers() {
    check_exact("dinov2_backbone", "dinov2_backbone");
}

#[test]
fn timm_names_load_into_the_same_model() {
    check_exact("vit_timm", "vit");
}

/// Decode, resize, crop, normalise, classify: against the slow (PIL) HF processors.
#[test]
fn full_image_pipeline_matches_transformers() {
    let device = Device::flex();
    for name in ["vit", "deit", "dinov2"] {
        let dir = fixtures().join(name);
        let loaded = load(name, &device);
        let preprocess =
            PreprocessConfig::from_json(&std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap()).unwrap();
        let bytes = read(&dir.join("expected.safetensors"));
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let cases: serde_json::Value = serde_json::from_slice(&read(&dir.join("pipeline.json"))).unwrap();
        for case in cases.as_array().unwrap() {
            let image_path = case["image"].as_str().unwrap();
            let image = decode_image(&read(&fixtures().join(image_path))).unwrap();
            let pixels = preprocess.batch(&[image], &device).unwrap();
            let stem = Path::new(image_path).file_stem().unwrap().to_str().unwrap();
            let pixel_diff = max_diff(pixels.clone(), expected(&file, &format!("photo.{stem}.pixel_values")));
            let probs = softmax(loaded.model.forward(pixels), 1);
            let reference: Vec<f32> = case["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
            let prob_diff = max_diff(probs.clone(), (reference.clone(), vec![1, reference.len()]));
            let ours = probs.clone().into_data().try_to_vec::<f32>().unwrap();
            let top1 = (0..ours.len()).max_by(|&a, &b| ours[a].total_cmp(&ours[b])).unwrap() as i64;
            println!("{name} {image_path}: pixels differ by {pixel_diff:.4} (normalised units), probabilities by {prob_diff:.2e}");
            assert!(prob_diff <= 2e-3, "{name} {image_path}: probabilities differ by {prob_diff}");
            assert_eq!(top1, case["top1"].as_i64().unwrap(), "{name} {image_path}: top-1");
        }
    }
}

/// The real DINOv2-S/14 checkpoint of `../shared` on two Imagenette photos (skipped without it).
/// The real DINOv2-S and its two reference crops, normalised exactly as the processor does
/// (u8 / 255, then (x - mean) / std, in f32); `None` when `../shared` is absent.
fn real_dinov2_small(device: &Device) -> Option<(vitrine_model::Loaded, Tensor<4>)> {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    let model_dir = shared.join("models/dinov2-small-imgfocus");
    if !model_dir.exists() {
        eprintln!("skipped: {} is absent", model_dir.display());
        return None;
    }
    let config = std::fs::read_to_string(model_dir.join("config.json")).unwrap();
    let loaded = load_safetensors(&config, &read(&model_dir.join("model.safetensors")), device).unwrap();
    let bytes = read(&fixtures().join("dinov2_small_real.safetensors"));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let crops = file.tensor("pixels_u8").unwrap();
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let plane = 224 * 224;
    let values: Vec<f32> = crops
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / plane) % 3;
            (f32::from(v) / 255.0 - mean[c]) / std[c]
        })
        .collect();
    Some((loaded, Tensor::from_data(TensorData::new(values, [2, 3, 224, 224]), device)))
}

#[test]
fn real_dinov2_small_matches_transformers() {
    let device = Device::flex();
    let Some((loaded, pixels)) = real_dinov2_small(&device) else { return };
    let bytes = read(&fixtures().join("dinov2_small_real.safetensors"));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let diff = max_diff(loaded.model.forward_features(pixels), expected(&file, "last_hidden_state"));
    println!("real DINOv2-S: last_hidden_state differs by {diff:.2e}");
    assert!(diff <= 1e-3, "last_hidden_state differs by {diff}");
}

/// Token merging against the sort-based PyTorch reference of `tests/fixtures/make_tome_fixtures.py`
/// (tolerance 1e-4, as for the plain model): 1, 3 and 8 merges per block (8 is more than half of
/// the tokens, so it is capped), square and non-square inputs, with and without attention maps.
#[test]
fn token_merging_matches_the_reference() {
    let device = Device::flex();
    let bytes = read(&fixtures().join("tome.safetensors"));
    let tome = SafeTensors::deserialize(&bytes).unwrap();
    for family in ["vit", "deit", "dinov2"] {
        let loaded = load(family, &device);
        let inputs = read(&fixtures().join(family).join("expected.safetensors"));
        let inputs = SafeTensors::deserialize(&inputs).unwrap();
        for (case, key) in [("square", "pixel_values"), ("ns", "ns.pixel_values")] {
            let pixels: Tensor<4> = tensor(&inputs, key, &device);
            for r in [1, 3, 8] {
                let model = loaded.model.clone().with_token_merging(r);
                let reference = expected(&tome, &format!("{family}.{case}.r{r}.logits"));
                let fused = max_diff(model.forward(pixels.clone()), reference.clone());
                let explicit = max_diff(model.forward_with_attentions(pixels.clone()).logits.unwrap(), reference);
                println!("{family} {case} r={r}: logits differ by {fused:.2e} (fused), {explicit:.2e} (explicit)");
                assert!(fused <= 1e-4 && explicit <= 1e-4, "{family} {case} r={r}: {fused} / {explicit}");
            }
        }
    }
}

/// The real DINOv2-S with 8 merges per block (257 tokens down to 161): same tokens, in the same
/// order, as the reference; and the attention maps still cover every patch.
#[test]
fn token_merging_on_real_dinov2_small_matches_the_reference() {
    let device = Device::flex();
    let Some((loaded, pixels)) = real_dinov2_small(&device) else { return };
    let bytes = read(&fixtures().join("tome.safetensors"));
    let tome = SafeTensors::deserialize(&bytes).unwrap();
    let model = loaded.model.with_token_merging(8);
    let out = model.forward_with_attentions(pixels);
    let diff = max_diff(out.last_hidden_state, expected(&tome, "dinov2_small_real.r8.last_hidden_state"));
    println!("real DINOv2-S, r=8: last_hidden_state differs by {diff:.2e}");
    assert!(diff <= 1e-3, "last_hidden_state differs by {diff}");
    assert_eq!(out.attentions[11].dims(), [2, 6, 257, 257], "maps are spread back over the 257 original tokens");
}

/// Class-specific relevance (Chefer et al. 2021) against `tests/fixtures/make_relevance_fixtures.py`,
/// which takes the gradients from PyTorch's autograd on transformers' own attention probabilities:
/// every class of both images, square and non-square inputs, within 1e-4 (peak-normalised maps);
/// and DINO's head masks of the last layer, exactly.
#[test]
fn relevance_and_head_masks_match_the_reference() {
    use vitrine_model::attention_map::{AttentionMap, attention_map};
    use vitrine_model::explain::{for_gradients, relevance};
    let device = Device::flex();
    let bytes = read(&fixtures().join("relevance.safetensors"));
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    let mut largest = 0.0f32;
    for family in ["vit", "deit", "dinov2"] {
        let loaded = load(family, &device);
        let model = for_gradients(&loaded.model);
        let inputs = read(&fixtures().join(family).join("expected.safetensors"));
        let inputs = SafeTensors::deserialize(&inputs).unwrap();
        for (case, key) in [("square", "pixel_values"), ("ns", "ns.pixel_values")] {
            let pixels: Tensor<4> = tensor(&inputs, key, &device);
            let (want, shape) = expected(&reference, &format!("{family}.{case}.relevance"));
            let [images, classes, rows, cols] = shape[..] else { panic!("{shape:?}") };
            let grid = rows * cols;
            for class in 0..classes {
                let ours = relevance(&model, pixels.clone().autodiff(), &vec![class; images]);
                let theirs: Vec<f32> = (0..images).flat_map(|i| want[(i * classes + class) * grid..][..grid].to_vec()).collect();
                let diff = max_diff(ours, (theirs, vec![images, rows, cols]));
                assert!(diff <= 1e-4, "{family} {case} class {class}: relevance differs by {diff}");
                largest = largest.max(diff);
            }
            let attentions = loaded.model.forward_with_attentions(pixels).attentions;
            let (want, shape) = expected(&reference, &format!("{family}.{case}.head_masks"));
            let heads = shape[1];
            for head in 0..heads {
                let ours = attention_map(&attentions, AttentionMap::HeadMask { layer: 1, head }, loaded.config.num_prefix_tokens(), [rows, cols]);
                let theirs: Vec<f32> = (0..images).flat_map(|i| want[(i * heads + head) * grid..][..grid].to_vec()).collect();
                assert_eq!(max_diff(ours, (theirs, vec![images, rows, cols])), 0.0, "{family} {case} head {head}: mask");
            }
        }
    }
    println!("relevance: largest difference {largest:.2e}");
}
