//! Weights and configs that must be refused with one clear error, never a panic or a huge allocation.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use vitrine_model::{LoadError, load_safetensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn vit() -> (String, Vec<u8>) {
    (
        std::fs::read_to_string(fixture("vit/config.json")).unwrap(),
        std::fs::read(fixture("vit/model.safetensors")).unwrap(),
    )
}

fn error(config: &str, weights: &[u8]) -> String {
    match load_safetensors(config, weights, &Device::flex()) {
        Ok(_) => panic!("loaded"),
        Err(err) => err.to_string(),
    }
}

/// Rewrites the JSON header of a safetensors file (keeping the data section as it is).
fn with_header(weights: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&weights[8..8 + len]).unwrap();
    edit(&mut header);
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&weights[8 + len..]);
    out
}

#[test]
fn truncated_file_is_refused() {
    let (config, weights) = vit();
    let err = error(&config, &weights[..weights.len() - 100]);
    assert!(err.starts_with("not a valid safetensors file"), "{err}");
    let err = error(&config, &weights[..5]);
    assert!(err.starts_with("not a valid safetensors file"), "{err}");
}

#[test]
fn header_claiming_more_bytes_than_exist_is_refused() {
    let (config, mut weights) = vit();
    weights[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = error(&config, &weights);
    assert!(err.starts_with("not a valid safetensors file"), "{err}");
    // A tensor whose offsets point past the end of the data.
    let (_, weights) = vit();
    let hostile = with_header(&weights, |h| {
        h["classifier.bias"]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
    });
    let err = error(&config, &hostile);
    assert!(err.starts_with("not a valid safetensors file"), "{err}");
}

#[test]
fn garbage_is_refused() {
    let (config, _) = vit();
    let err = error(&config, b"this is not a weights file at all, just text..........");
    assert!(err.starts_with("not a valid safetensors file"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (config, weights) = vit();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let kept: Vec<_> = file.tensors().into_iter().filter(|(n, _)| n != "vit.encoder.layer.1.output.dense.weight").collect();
    let bytes = safetensors::serialize(kept, None).unwrap();
    let err = error(&config, &bytes);
    assert_eq!(err, "1 tensor(s) missing from the weights: vit.encoder.layer.1.output.dense.weight");
}

#[test]
fn unexpected_tensor_is_named() {
    let (config, weights) = vit();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let extra = [0u8; 8];
    let mut tensors = file.tensors();
    tensors.push(("vit.encoder.layer.0.adapter.weight".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &extra).unwrap()));
    let bytes = safetensors::serialize(tensors, None).unwrap();
    let err = error(&config, &bytes);
    assert_eq!(err, "1 unexpected tensor(s) in the weights: vit.encoder.layer.0.adapter.weight");
}

#[test]
fn wrong_shape_names_both_shapes() {
    let (config, weights) = vit();
    // The config says 64-wide MLPs, the weights hold 48-wide ones.
    let config = config.replace("\"intermediate_size\": 48", "\"intermediate_size\": 64");
    let err = error(&config, &weights);
    assert_eq!(err, "tensor \"vit.encoder.layer.0.intermediate.dense.bias\" has shape [48], the model expects [64]");
}

#[test]
fn labels_that_do_not_match_the_head_are_refused() {
    let (config, weights) = vit();
    let config = config.replace("\"4\": \"gas_pump\"", "\"4\": \"gas_pump\", \"5\": \"extra\"");
    let err = error(&config, &weights);
    assert_eq!(err, "tensor \"classifier.bias\" has shape [5], the model expects [6]");
}

#[test]
fn unknown_model_type_and_bad_json_are_refused() {
    let (config, weights) = vit();
    let err = error(&config.replace("\"model_type\": \"vit\"", "\"model_type\": \"swin\""), &weights);
    assert_eq!(err, "unknown model_type \"swin\" (vitrine reads vit, deit and dinov2)");
    let err = error("{ not json", &weights);
    assert!(err.starts_with("invalid JSON"), "{err}");
}

#[test]
fn integer_tensors_are_refused_by_dtype() {
    let (config, weights) = vit();
    let hostile = with_header(&weights, |h| h["classifier.bias"]["dtype"] = "I32".into());
    let err = load_safetensors(&config, &hostile, &Device::flex()).expect_err("loaded");
    assert!(matches!(err, LoadError::UnsupportedDtype { .. }), "{err}");
}

#[test]
fn half_precision_weights_load() {
    let (config, weights) = vit();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let bytes = view.data().chunks_exact(4).flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()).collect();
            (name, view.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<_> = halves
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    assert!(load_safetensors(&config, &bytes, &Device::flex()).is_ok());
}

#[test]
fn save_then_load_gives_identical_logits() {
    let device = Device::flex();
    let (config, weights) = vit();
    let loaded = load_safetensors(&config, &weights, &device).unwrap();
    let saved = vitrine_model::save_safetensors(&loaded.model, loaded.config.model_type).unwrap();
    let reloaded = load_safetensors(&config, &saved, &device).unwrap();
    let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
    let a = loaded.model.forward(x.clone()).into_data();
    let b = reloaded.model.forward(x).into_data();
    assert_eq!(a, b);
}

#[test]
fn non_finite_weights_are_refused() {
    let (config, weights) = vit();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> =
            file.tensors().into_iter().map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec())).collect();
        let (_, _, data) = owned.iter_mut().find(|(name, _, _)| name == "vit.encoder.layer.1.output.dense.weight").unwrap();
        data[8..12].copy_from_slice(&bad.to_le_bytes());
        let views: Vec<_> = owned
            .iter()
            .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap()))
            .collect();
        let err = error(&config, &safetensors::serialize(views, None).unwrap());
        assert_eq!(
            err,
            "tensor \"vit.encoder.layer.1.output.dense.weight\": holds 1 NaN or infinite values (the checkpoint is damaged, or training diverged)"
        );
    }
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_the_model_is_built() {
    let (config, weights) = vit();
    // Built first, these would allocate gigabytes (a million blocks; 39 M position embeddings).
    let err = error(&config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000"), &weights);
    assert_eq!(err, "invalid configuration: config.json has num_hidden_layers 1000000, the weights hold 2 blocks");
    let err = error(&config.replace("\"image_size\": 32", "\"image_size\": 100000"), &weights);
    assert_eq!(
        err,
        "invalid configuration: config.json's image_size 100000 and patch_size 8 make 156250001 positions, the weights' position table is [1, 17, 32]"
    );
}

#[test]
fn files_that_are_not_safetensors_say_what_they_are() {
    let (config, weights) = vit();
    let err = error(&config, b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>...</body></html>");
    assert!(err.contains("an HTML page, not weights"), "{err}");
    let err = error(&config, b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n");
    assert!(err.contains("Git LFS pointer"), "{err}");
    // The same tensor twice in the header, the second copy (the one a parser keeps) pointing elsewhere.
    let len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&weights[8..8 + len]).unwrap().trim_end();
    let twice = format!(r#"{},"classifier.bias":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#, &header[..header.len() - 1]);
    let mut hostile = (twice.len() as u64).to_le_bytes().to_vec();
    hostile.extend(twice.as_bytes());
    hostile.extend(&weights[8 + len..]);
    let err = error(&config, &hostile);
    assert!(err.contains(r#"names tensor "classifier.bias" twice"#), "{err}");
}
