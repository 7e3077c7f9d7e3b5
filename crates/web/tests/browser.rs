//! vitrine-web in a real browser (`wasm-pack test --release --headless --chrome`): on the WebGPU
//! adapter and on the CPU backend, the committed tiny fixtures give transformers' logits and
//! attention maps, and photos give the same answer on both backends.
//!
//! Tolerances: logits within 1e-4 absolute of transformers' (the native build is within 1e-4 too,
//! `crates/model/tests/parity.rs`), attention maps within 1e-4 of the maps made from transformers'
//! attention probabilities; WebGPU and CPU within 1e-5 of each other on photos (with and without
//! token merging); photo probabilities within 2e-3 of transformers' PIL pipeline (JPEG decoder and
//! resampler differences, measured in parity.rs); the int8 kernel within 1e-5 of burn's product of
//! the same integers; relevance maps within 1e-4 of the PyTorch reference on both backends.
#![cfg(target_arch = "wasm32")]

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use vitrine_web::engine::all_maps;
use vitrine_web::{Backend, Classifier, Prediction};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

struct Fixture {
    name: &'static str,
    config: &'static str,
    preprocessor: &'static str,
    weights: &'static [u8],
    expected: &'static [u8],
    pipeline: &'static str,
}

macro_rules! fixture {
    ($name:literal) => {
        Fixture {
            name: $name,
            config: include_str!(concat!("../../../tests/fixtures/", $name, "/config.json")),
            preprocessor: include_str!(concat!("../../../tests/fixtures/", $name, "/preprocessor_config.json")),
            weights: include_bytes!(concat!("../../../tests/fixtures/", $name, "/model.safetensors")),
            expected: include_bytes!(concat!("../../../tests/fixtures/", $name, "/expected.safetensors")),
            pipeline: include_str!(concat!("../../../tests/fixtures/", $name, "/pipeline.json")),
        }
    };
}

fn fixtures() -> [Fixture; 3] {
    [fixture!("vit"), fixture!("deit"), fixture!("dinov2")]
}

const PHOTOS: [(&str, &[u8]); 4] = [
    ("tench.jpg", include_bytes!("../../../tests/fixtures/images/tench.jpg")),
    ("church.jpg", include_bytes!("../../../tests/fixtures/images/church.jpg")),
    ("parachute.jpg", include_bytes!("../../../tests/fixtures/images/parachute.jpg")),
    ("wide.png", include_bytes!("../../../tests/fixtures/images/wide.png")),
];

const TOME: &[u8] = include_bytes!("../../../tests/fixtures/tome.safetensors");
const RELEVANCE: &[u8] = include_bytes!("../../../tests/fixtures/relevance.safetensors");

async fn webgpu() -> Backend {
    Backend::webgpu().await.map_err(JsValue::from).expect("WebGPU must be available to this test (--enable-unsafe-webgpu)")
}

fn load(backend: &Backend, f: &Fixture) -> Classifier {
    Classifier::load(backend, f.weights, f.config, Some(f.preprocessor.to_string()))
        .map_err(JsValue::from)
        .unwrap_or_else(|e| panic!("{}: {e:?}", f.name))
}

/// One tensor of an `expected.safetensors`, item `item` of its batch.
fn expected<const D: usize>(file: &SafeTensors, name: &str, item: usize, device: &Device) -> Tensor<D> {
    let view = file.tensor(name).unwrap_or_else(|_| panic!("fixture has no {name}"));
    let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let tensor = Tensor::<D>::from_data(TensorData::new(values, view.shape().to_vec()), device);
    tensor.narrow(0, item, 1)
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

async fn check_against_transformers(backend: &Backend) {
    let cpu = Device::flex();
    for f in fixtures() {
        let classifier = load(backend, &f);
        let file = SafeTensors::deserialize(f.expected).unwrap();
        for item in 0..2 {
            let pixels = expected::<4>(&file, "pixel_values", item, backend.device());
            let out = classifier.predict(pixels, 5).await.unwrap();
            let logits = values(expected::<2>(&file, "logits", item, &cpu));
            let diff = max_diff(&out.logits(), &logits);
            assert!(diff <= 1e-4, "{} on {}: logits differ from transformers' by {diff}", f.name, backend.kind());

            let attentions: Vec<Tensor<4>> =
                (0..2).map(|layer| expected(&file, &format!("attentions.{layer}"), item, &cpu)).collect();
            let prefix = if f.name == "deit" { 2 } else { 1 };
            let reference = values(all_maps(&attentions, prefix, [4, 4]));
            let diff = max_diff(&out.maps(), &reference);
            assert!(diff <= 1e-4, "{} on {}: attention maps differ by {diff}", f.name, backend.kind());
            assert_eq!((out.rows(), out.cols()), (4, 4));
            let rollout = &out.maps()[..16];
            assert!(rollout.iter().any(|&v| v < 0.9), "{}: rollout is flat: {rollout:?}", f.name);
        }
        // A non-square input: interpolated position embeddings on this backend.
        let pixels = expected::<4>(&file, "ns.pixel_values", 0, backend.device());
        let out = classifier.predict(pixels, 5).await.unwrap();
        let diff = max_diff(&out.logits(), &values(expected::<2>(&file, "ns.logits", 0, &cpu)));
        assert!(diff <= 1e-4, "{} on {}: non-square logits differ by {diff}", f.name, backend.kind());
        assert_eq!((out.rows(), out.cols()), (4, 6));

        // Token merging against the sort-based PyTorch reference (tests/fixtures/make_tome_fixtures.py).
        let tome = SafeTensors::deserialize(TOME).unwrap();
        let mut classifier = classifier;
        for r in [1, 3] {
            classifier.set_token_merging(r).map_err(JsValue::from).expect("r fits the fixture");
            for item in 0..2 {
                let out = classifier.predict(expected::<4>(&file, "pixel_values", item, backend.device()), 5).await.unwrap();
                let reference = values(expected::<2>(&tome, &format!("{}.square.r{r}.logits", f.name), item, &cpu));
                let diff = max_diff(&out.logits(), &reference);
                assert!(diff <= 1e-4, "{} on {}, ToMe r={r}: logits differ from the reference by {diff}", f.name, backend.kind());
                let rollout = &out.maps()[..16];
                assert!(rollout.iter().any(|&v| v < 0.9), "{}, ToMe r={r}: rollout is flat: {rollout:?}", f.name);
            }
        }
    }
}

#[wasm_bindgen_test]
async fn webgpu_matches_transformers() {
    let backend = webgpu().await;
    assert_eq!(backend.kind(), "webgpu");
    check_against_transformers(&backend).await;
}

#[wasm_bindgen_test]
async fn cpu_matches_transformers() {
    check_against_transformers(&Backend::cpu()).await;
}

/// Class-specific relevance through burn's autodiff on each backend, against the reference of
/// `tests/fixtures/make_relevance_fixtures.py` (PyTorch autograd on transformers' attention), every
/// class of both images, with token merging on (relevance runs on every token regardless): within
/// 1e-4 on both backends (WebGPU was 5.0e-4 off while GELU's gradient there was burn's tanh
/// approximation: `vitrine_kernels::gelu`).
#[wasm_bindgen_test]
async fn relevance_matches_the_reference_on_both_backends() {
    let reference = SafeTensors::deserialize(RELEVANCE).unwrap();
    let cpu = Device::flex();
    for backend in [webgpu().await, Backend::cpu()] {
        let mut largest = 0f32;
        for f in fixtures() {
            let mut classifier = load(&backend, &f);
            classifier.set_token_merging(3).map_err(JsValue::from).expect("r = 3 fits");
            let file = SafeTensors::deserialize(f.expected).unwrap();
            for item in 0..2 {
                let maps = expected::<4>(&reference, &format!("{}.square.relevance", f.name), item, &cpu);
                for class in 0..5 {
                    let pixels = expected::<4>(&file, "pixel_values", item, backend.device());
                    let got = classifier.relevance_of(pixels, class).await.unwrap();
                    largest = largest.max(max_diff(&got, &values(maps.clone().narrow(1, class, 1))));
                }
            }
        }
        wasm_bindgen_test::console_log!("relevance on {}: within {largest:.1e} of the reference", backend.kind());
        assert!(largest <= 1e-4, "{}: relevance differs from the reference by up to {largest}", backend.kind());
    }
}

async fn classify(classifier: &Classifier, bytes: &[u8]) -> Prediction {
    classifier.classify_file(bytes.to_vec(), 5).await.unwrap()
}

#[wasm_bindgen_test]
async fn photos_agree_on_both_backends_and_with_the_pipeline() {
    let gpu = webgpu().await;
    let cpu = Backend::cpu();
    for f in fixtures() {
        let mut on_gpu = load(&gpu, &f);
        let mut on_cpu = load(&cpu, &f);
        let pipeline: serde_json::Value = serde_json::from_str(f.pipeline).unwrap();
        for case in pipeline.as_array().unwrap() {
            let image = case["image"].as_str().unwrap().trim_start_matches("images/");
            let bytes = PHOTOS.iter().find(|(name, _)| *name == image).unwrap_or_else(|| panic!("no photo {image}")).1;
            let (a, b) = (classify(&on_gpu, bytes).await, classify(&on_cpu, bytes).await);
            let diff = max_diff(&a.logits(), &b.logits());
            assert!(diff <= 1e-5, "{}/{image}: WebGPU and CPU logits differ by {diff}", f.name);
            let diff = max_diff(&a.maps(), &b.maps());
            assert!(diff <= 1e-5, "{}/{image}: WebGPU and CPU attention maps differ by {diff}", f.name);
            let probs = vitrine_web::softmax(&a.logits());
            let theirs: Vec<f32> = case["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
            let diff = max_diff(&probs, &theirs);
            assert!(diff <= 2e-3, "{}/{image}: probabilities differ from transformers' pipeline by {diff}", f.name);
            assert_eq!(a.labels().len(), 5);
            assert_eq!(a.probs()[0], probs[a.indices()[0] as usize]);
        }
        // With token merging, the maps are spread back over the patches (`tome.rs`, by gather).
        on_gpu.set_token_merging(3).map_err(JsValue::from).expect("r = 3 fits");
        on_cpu.set_token_merging(3).map_err(JsValue::from).expect("r = 3 fits");
        let (a, b) = (classify(&on_gpu, PHOTOS[0].1).await, classify(&on_cpu, PHOTOS[0].1).await);
        let diff = max_diff(&a.maps(), &b.maps());
        assert!(diff <= 1e-5, "{}, ToMe r=3: WebGPU and CPU attention maps differ by {diff}", f.name);
    }
}

#[wasm_bindgen_test]
async fn rgba_pixels_and_files_agree() {
    let classifier = load(&Backend::cpu(), &fixture!("vit"));
    let rgb = vitrine_model::decode::decode_image(PHOTOS[0].1).unwrap();
    let rgba: Vec<u8> = rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let from_pixels = classifier.classify(rgba, rgb.width(), rgb.height(), 3).await.unwrap();
    let from_file = classify(&classifier, PHOTOS[0].1).await;
    assert_eq!(from_pixels.logits(), from_file.logits());
    assert_eq!(from_pixels.labels().len(), 3);
}

/// The simd128 int8 kernel against burn's f32 product of the same integers (exact: every partial
/// sum is an integer below 2^24), then the same scales, bias and GELU: within 1e-5 relative
/// (burn's GELU and the kernels' differ by up to 1e-6). Shapes leave partial tiles, pairs, blocks and
/// 16-value chunks of the vectorised quantization; one row holds a NaN, which quantizes to -127.
#[wasm_bindgen_test]
fn int8_products_match_burn_on_the_same_integers() {
    use burn::tensor::activation::gelu;
    use vitrine_kernels::int8::{self, Int8Isa, Packed};
    assert_eq!(Int8Isa::detect(), Int8Isa::Simd128, "the browser build's integer kernel");
    let device = Device::flex();
    let spread = |len: usize, seed: usize| -> Vec<f32> { (0..len).map(|i| ((i * 7919 + seed * 104_729) % 4001) as f32 / 1000.0 - 2.0).collect() };
    let matrix = |values: Vec<f32>, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(values, shape), &device);
    for (rows, d_in, d_out, with_gelu) in [(1, 3, 5, false), (5, 7, 17, true), (37, 64, 70, false), (197, 384, 384, true), (3, 130, 129, true), (6, 40, 24, false)] {
        let (mut x, bias) = (spread(rows * d_in, 1), spread(d_out, 3));
        if d_in == 40 {
            x[d_in + 20] = f32::NAN;
        }
        let (qw, col_scales) = int8::quantize_columns(&spread(d_in * d_out, 2), d_out);
        let got = int8::forward(&x, rows, &Packed::new(&qw, d_in, d_out), &col_scales, &bias, with_gelu);

        let (qx, row_scales) = int8::quantize_rows(&x, d_in);
        let sums = matrix(qx.iter().map(|&v| f32::from(v)).collect(), [rows, d_in])
            .matmul(matrix(qw.iter().map(|&v| f32::from(v)).collect(), [d_in, d_out]));
        let scaled = sums * matrix(row_scales, [rows, 1]) * matrix(col_scales, [1, d_out]) + matrix(bias, [1, d_out]);
        let want = values(if with_gelu { gelu(scaled) } else { scaled });
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{rows}x{d_in}x{d_out}, gelu {with_gelu}: {worst}");
    }
}

#[wasm_bindgen_test]
async fn bad_input_is_an_error_not_a_panic() {
    let backend = Backend::cpu();
    let f = fixture!("vit");
    let classifier = load(&backend, &f);
    assert!(classifier.classify_file(b"GIF89a not really".to_vec(), 5).await.is_err());
    assert!(classifier.classify(vec![0; 7], 2, 2, 5).await.is_err());
    assert!(Classifier::load(&backend, &f.weights[..100], f.config, None).is_err());
    assert!(Classifier::load(&backend, f.weights, "{\"model_type\": \"bert\"}", None).is_err());
    let info: serde_json::Value = serde_json::from_str(&classifier.info()).unwrap();
    assert_eq!(info["heads"], serde_json::json!([4, 4]));
}
