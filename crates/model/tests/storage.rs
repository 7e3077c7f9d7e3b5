//! Bundles stored as f16 and int8 (per-channel scales) load back into the same model, within
//! stated bounds of the f32 model, and refuse malformed int8 files.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use vitrine_model::{LoadError, Storage, load_bundle_for_inference, load_safetensors, save_safetensors_as};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn input(side: usize) -> Tensor<4> {
    let values: Vec<f32> = (0..2 * 3 * side * side).map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0).collect();
    Tensor::from_data(TensorData::new(values, [2, 3, side, side]), &Device::flex())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Logits of the fixture `name` as stored in f32 and after a round trip through `storage`.
fn round_trip(name: &str, storage: Storage) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let dir = fixture(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();
    let device = Device::flex();
    let loaded = load_safetensors(&config, &original, &device).unwrap();
    let model_type = loaded.hf_config.model_type().unwrap();
    let stored = save_safetensors_as(&loaded.model, model_type, storage).unwrap();
    let reloaded = load_safetensors(&config, &stored, &device).unwrap();
    let side = loaded.config.image_size;
    let a = loaded.model.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
    let b = reloaded.model.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
    (a, b, original.len(), stored.len())
}

#[test]
fn f16_storage_stays_within_1e_3() {
    for name in ["vit", "deit", "dinov2"] {
        let (a, b, _, _) = round_trip(name, Storage::F16);
        assert!(max_abs_diff(&a, &b) < 1e-3, "{name}: {}", max_abs_diff(&a, &b));
    }
}

#[test]
fn int8_storage_stays_within_2_percent_of_the_logit_range() {
    for name in ["vit", "deit", "dinov2"] {
        let (a, b, _, _) = round_trip(name, Storage::Int8);
        let range = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&a, &b);
        assert!(diff > 0.0, "{name}: int8 changed nothing, so nothing was quantized");
        assert!(diff < 0.02 * range, "{name}: {diff} vs logit range {range}");
    }
}

/// The fixture `name`'s config, its f32 model on flex, and its weights stored as int8.
fn stored_as_int8(name: &str) -> (String, vitrine_model::Loaded, Vec<u8>) {
    let dir = fixture(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let f32_model = load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), &Device::flex()).unwrap();
    let stored = save_safetensors_as(&f32_model.model, f32_model.hf_config.model_type().unwrap(), Storage::Int8).unwrap();
    (config, f32_model, stored)
}

#[test]
fn int8_products_stay_near_the_f32_products_of_the_same_int8_weights() {
    if !vitrine_kernels::int8::available() {
        eprintln!("no integer kernel on this CPU: nothing to check");
        return;
    }
    for name in ["vit", "deit", "dinov2"] {
        let (config, f32_model, stored) = stored_as_int8(name);
        let device = Device::flex();
        let int8 = load_safetensors(&config, &stored, &device).unwrap().model;
        let side = f32_model.config.image_size;
        let a = int8.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
        let int8 = int8.with_int8_products();
        let query = &int8.vit.encoder.layer[0].attention.attention.query;
        assert!(matches!(query.weight.val().dtype(), burn::tensor::DType::QFloat(_)), "{name}: the blocks compute in int8");
        let b = int8.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
        // The activations' rounding (per token, 8 bits) on top of the weights' own.
        let range = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&a, &b);
        assert!(diff > 0.0 && diff < 0.02 * range, "{name}: {diff} vs logit range {range}");
    }
}

/// Loaded for inference, an int8 bundle's block weights go straight from the file's integers to
/// the products' layout: the same integers and scales as the f32 rebuild quantized again, so the
/// same logits (within 1e-5 of their range: the scales may differ by an ulp), and no f32 weight.
#[test]
fn int8_loaded_for_inference_computes_on_the_stored_integers() {
    if !vitrine_kernels::int8::available() {
        eprintln!("no integer kernel on this CPU: nothing to check");
        return;
    }
    for name in ["vit", "deit", "dinov2"] {
        let (config, f32_model, stored) = stored_as_int8(name);
        let device = Device::flex();
        // As `vitrine quantize` writes it: the config records the scheme.
        let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
        json["quantization"] = Storage::Int8.config_entry().unwrap();
        let config = json.to_string();
        let rebuilt = load_safetensors(&config, &stored, &device).unwrap().int8_products_if_stored().model;
        let (direct, _) = load_bundle_for_inference(&config, &stored, None, &device).unwrap();
        for layer in &direct.model.vit.encoder.layer {
            for linear in [&layer.attention.attention.query, &layer.intermediate.dense, &layer.output.dense] {
                assert!(matches!(linear.weight.val().dtype(), burn::tensor::DType::QFloat(_)), "{name}: int8 weights");
            }
        }
        let side = f32_model.config.image_size;
        let a = rebuilt.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
        let b = direct.model.forward(input(side)).into_data().try_into_vec::<f32>().unwrap();
        let range = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(&a, &b) <= 1e-5 * range.max(1.0), "{name}: {} vs logit range {range}", max_abs_diff(&a, &b));
    }
}

#[test]
fn int8_file_stores_block_weights_as_i8_with_scales() {
    let dir = fixture("vit");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let loaded = load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), &Device::flex()).unwrap();
    let bytes = save_safetensors_as(&loaded.model, loaded.hf_config.model_type().unwrap(), Storage::Int8).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let query = file.tensor("vit.encoder.layer.0.attention.attention.query.weight").unwrap();
    assert_eq!(query.dtype(), Dtype::I8);
    let scale = file.tensor("vit.encoder.layer.0.attention.attention.query.weight_scale").unwrap();
    assert_eq!((scale.dtype(), scale.shape()), (Dtype::F32, &[32][..]));
    assert_eq!(file.tensor("classifier.weight").unwrap().dtype(), Dtype::F32);
    assert_eq!(file.tensor("vit.encoder.layer.0.output.dense.bias").unwrap().dtype(), Dtype::F32);
}

#[test]
fn int8_without_or_with_bad_scales_is_refused() {
    let dir = fixture("vit");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let loaded = load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), &Device::flex()).unwrap();
    let bytes = save_safetensors_as(&loaded.model, loaded.hf_config.model_type().unwrap(), Storage::Int8).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let target = "vit.encoder.layer.1.intermediate.dense.weight_scale";
    let rewrite = |replace: Option<(Vec<usize>, Vec<u8>)>| {
        let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .filter_map(|(n, v)| match (&replace, n == target) {
                (None, true) => None,
                (Some((shape, data)), true) => Some((n, Dtype::F32, shape.clone(), data.clone())),
                _ => Some((n, v.dtype(), v.shape().to_vec(), v.data().to_vec())),
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            kept.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
        safetensors::serialize(views, None).unwrap()
    };
    let missing = load_safetensors(&config, &rewrite(None), &Device::flex()).unwrap_err();
    assert!(matches!(&missing, LoadError::Tensor { message, .. } if message.contains("needs its scales")), "{missing}");
    let short = load_safetensors(&config, &rewrite(Some((vec![2], vec![0; 8]))), &Device::flex()).unwrap_err();
    assert!(short.to_string().contains("must be F32"), "{short}");
    let nan = load_safetensors(&config, &rewrite(Some((vec![48], f32::NAN.to_le_bytes().repeat(48)))), &Device::flex()).unwrap_err();
    assert!(nan.to_string().contains("non-finite"), "{nan}");
}
