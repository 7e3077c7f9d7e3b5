//! Pruning really removes heads and neurons, and removing equals masking.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter};
use vitrine_model::prune::{Keep, prune, resize_positions};
use vitrine_model::{Loaded, Vit, load_safetensors};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn load(name: &str) -> Loaded {
    let dir = fixture(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), &Device::flex()).unwrap()
}

fn logits(model: &Vit, side: usize) -> Vec<f32> {
    let values: Vec<f32> = (0..2 * 3 * side * side).map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0).collect();
    let x = Tensor::<4>::from_data(TensorData::new(values, [2, 3, side, side]), &Device::flex());
    model.forward(x).into_data().try_into_vec::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `model` with the output-projection columns of the given heads (and the second MLP layer's
/// columns of the given neurons) set to zero: the heads and neurons are masked, not removed.
fn masked(model: &Vit, head_dim: usize, heads: &[(usize, usize)], neurons: &[(usize, usize)]) -> Vit {
    let mut tensors = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false);
    for t in &mut tensors {
        let zero_cols: Vec<usize> = heads
            .iter()
            .filter(|(l, _)| t.name == format!("vit.encoder.layer.{l}.attention.output.dense.weight"))
            .flat_map(|&(_, h)| h * head_dim..(h + 1) * head_dim)
            .chain(neurons.iter().filter(|(l, _)| t.name == format!("vit.encoder.layer.{l}.output.dense.weight")).map(|&(_, n)| n))
            .collect();
        if zero_cols.is_empty() {
            continue;
        }
        let cols = t.shape[1];
        let mut values: Vec<f32> = t.to_bytes().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for (i, v) in values.iter_mut().enumerate() {
            if zero_cols.contains(&(i % cols)) {
                *v = 0.0;
            }
        }
        let bytes = burn_store::burn_pack::Bytes::from_bytes_vec(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        *t = burn_store::burn_pack::Tensor::new(t.name.clone(), t.dtype, t.shape.clone(), None, bytes);
    }
    let mut copy = model.clone();
    let result = copy.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    assert!(result.errors.is_empty());
    copy
}

#[test]
fn keeping_everything_changes_nothing() {
    for name in ["vit", "deit", "dinov2"] {
        let loaded = load(name);
        let (pruned, config) = prune(&loaded.model, &loaded.config, &Keep::all(&loaded.config), &Device::flex()).unwrap();
        assert_eq!(format!("{config:?}"), format!("{:?}", loaded.config));
        let side = loaded.config.image_size;
        assert_eq!(logits(&pruned, side), logits(&loaded.model, side), "{name}");
    }
}

#[test]
fn removing_heads_and_neurons_equals_masking_them() {
    for name in ["vit", "deit", "dinov2"] {
        let loaded = load(name);
        let config = &loaded.config;
        // Layer 0 loses head 1, layer 1 loses its first and last head and neurons 0, 5 and 7.
        let mut keep = Keep::all(config);
        keep.heads[0].retain(|&h| h != 1);
        let last = config.layer_num_attention_heads[1] - 1;
        keep.heads[1].retain(|&h| h != 0 && h != last);
        keep.neurons[1].retain(|&n| ![0, 5, 7].contains(&n));
        let (pruned, pruned_config) = prune(&loaded.model, config, &keep, &Device::flex()).unwrap();
        assert_eq!(pruned_config.layer_num_attention_heads[0], config.layer_num_attention_heads[0] - 1);
        assert!(pruned.num_params() < loaded.model.num_params());
        let reference = masked(&loaded.model, config.head_dim(), &[(0, 1), (1, 0), (1, last)], &[(1, 0), (1, 5), (1, 7)]);
        let side = config.image_size;
        let diff = max_abs_diff(&logits(&pruned, side), &logits(&reference, side));
        assert!(diff < 1e-5, "{name}: {diff}");
        assert!(max_abs_diff(&logits(&pruned, side), &logits(&loaded.model, side)) > 1e-4, "{name}: pruning changed nothing");
    }
}

#[test]
fn removing_every_head_of_a_layer_is_refused() {
    let loaded = load("vit");
    let mut keep = Keep::all(&loaded.config);
    keep.heads[1].clear();
    let err = prune(&loaded.model, &loaded.config, &keep, &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("every head of layer 1"), "{err}");
}

#[test]
fn resized_positions_give_the_same_logits_at_their_size() {
    for name in ["vit", "deit", "dinov2"] {
        let full = load(name);
        // The fixtures' grid is 4x4 (32 px, 8 px patches); at 48 px each pass resizes it to 6x6.
        let (resized, config) = resize_positions(&full.model, &full.config, 6, &Device::flex()).unwrap();
        assert_eq!(config.image_size, 48);
        let stored = resized.vit.embeddings.position_embeddings.val().dims();
        assert_eq!(stored[1], full.model.vit.embeddings.num_prefix_tokens() + 36, "{name}: the table holds the 6x6 grid");
        let diff = max_abs_diff(&logits(&full.model, 48), &logits(&resized, 48));
        assert!(diff <= 1e-6, "{name}: logits at 48 px differ by {diff}");
    }
    assert!(resize_positions(&load("vit").model, &load("vit").config, 0, &Device::flex()).is_err());
}
