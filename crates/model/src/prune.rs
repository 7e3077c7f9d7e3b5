//! Structured pruning that really removes parameters: attention heads (their query, key and value
//! rows and the output projection's columns) and MLP neurons (the first MLP layer's rows and the
//! second's columns). The result is an ordinary, smaller [`Vit`] whose config lists the heads and
//! MLP width kept in each layer. Choosing *what* to remove (importance from data) is the caller's.
//! [`select_layers`] keeps a subset of whole blocks (a shallower student initialised from a teacher).

use burn::tensor::{DType, Device};
use burn_store::burn_pack::{Bytes, Tensor as PackTensor};
use burn_store::{ModuleAdapter, ModuleSnapshot};

use crate::config::VitConfig;
use crate::error::{ConfigError, LoadError};
use crate::model::Vit;
use crate::weights::le;

/// What to keep, per layer: head indices and MLP neuron indices (each sorted, unique, in range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    pub heads: Vec<Vec<usize>>,
    pub neurons: Vec<Vec<usize>>,
}

impl Keep {
    /// Everything: pruning with this changes nothing.
    pub fn all(config: &VitConfig) -> Self {
        Self {
            heads: config.layer_num_attention_heads.iter().map(|&h| (0..h).collect()).collect(),
            neurons: config.layer_intermediate_size.iter().map(|&n| (0..n).collect()).collect(),
        }
    }

    fn check(&self, config: &VitConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.heads.len() != config.num_hidden_layers || self.neurons.len() != config.num_hidden_layers {
            return bad(format!("a pruning plan needs one entry per layer ({})", config.num_hidden_layers));
        }
        for (layer, (heads, neurons)) in self.heads.iter().zip(&self.neurons).enumerate() {
            if heads.is_empty() {
                return bad(format!("pruning would remove every head of layer {layer}; keep at least one"));
            }
            if neurons.is_empty() {
                return bad(format!("pruning would remove every MLP neuron of layer {layer}; keep at least one"));
            }
            let sorted = |v: &Vec<usize>, n: usize| v.windows(2).all(|w| w[0] < w[1]) && v.last().is_some_and(|&l| l < n);
            if !sorted(heads, config.layer_num_attention_heads[layer]) || !sorted(neurons, config.layer_intermediate_size[layer]) {
                return bad(format!("layer {layer}: kept heads and neurons must be sorted, unique and in range"));
            }
        }
        Ok(())
    }
}

/// A copy of `model` (built from `config`) with only the heads and neurons of `keep`.
pub fn prune(model: &Vit, config: &VitConfig, keep: &Keep, device: &Device) -> Result<(Vit, VitConfig), LoadError> {
    keep.check(config)?;
    let head_dim = config.head_dim();
    let pruned_config = VitConfig {
        layer_num_attention_heads: keep.heads.iter().map(Vec::len).collect(),
        layer_intermediate_size: keep.neurons.iter().map(Vec::len).collect(),
        ..config.clone()
    };
    let mut tensors = Vec::new();
    for tensor in model.collect(None, Some(crate::weights::adapter::to_pytorch()), false) {
        let shape = tensor.shape.to_vec();
        let bytes = tensor.to_bytes().map_err(|e| LoadError::Tensor { name: tensor.name.clone(), message: e.to_string() })?;
        let values = le::f32s(&bytes);
        let (values, shape) = match slice_plan(&tensor.name, keep, head_dim) {
            None => (values, shape),
            Some((Axis::Rows, index)) => select(&values, &shape, &index, true),
            Some((Axis::Cols, index)) => select(&values, &shape, &index, false),
        };
        let bytes = Bytes::from_bytes_vec(le::bytes(&values));
        tensors.push(PackTensor::new(tensor.name.clone(), DType::F32, shape, None, bytes));
    }
    let pruned = rebuild(&pruned_config, tensors, Some(crate::weights::adapter::to_burn()), device, "pruned weights")?;
    Ok((pruned, pruned_config))
}

/// A fresh model of `config` holding exactly `tensors` (every parameter, nothing else); `what`
/// names them in the error.
fn rebuild(
    config: &VitConfig,
    tensors: Vec<PackTensor>,
    adapter: Option<Box<dyn ModuleAdapter>>,
    device: &Device,
    what: &str,
) -> Result<Vit, LoadError> {
    let mut model = config.init(device);
    let result = model.apply(tensors, None, adapter, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(LoadError::Tensor { name: what.to_string(), message: format!("do not fit: {:?} {:?}", result.errors, result.missing) });
    }
    Ok(model)
}

enum Axis {
    Rows,
    Cols,
}

/// Which axis of parameter `name` (PyTorch layout) to slice, and the indices to keep.
fn slice_plan(name: &str, keep: &Keep, head_dim: usize) -> Option<(Axis, Vec<usize>)> {
    let rest = name.strip_prefix("vit.encoder.layer.")?;
    let (layer, param) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let head_units = || keep.heads[layer].iter().flat_map(|&h| h * head_dim..(h + 1) * head_dim).collect::<Vec<_>>();
    match param {
        "attention.attention.query.weight" | "attention.attention.key.weight" | "attention.attention.value.weight"
        | "attention.attention.query.bias" | "attention.attention.key.bias" | "attention.attention.value.bias" => {
            Some((Axis::Rows, head_units()))
        }
        "attention.output.dense.weight" => Some((Axis::Cols, head_units())),
        "intermediate.dense.weight" | "intermediate.dense.bias" => Some((Axis::Rows, keep.neurons[layer].clone())),
        "output.dense.weight" => Some((Axis::Cols, keep.neurons[layer].clone())),
        _ => None,
    }
}

/// Rows (axis 0) or columns (axis 1) `index` of a row-major tensor of `shape` (1-D: elements).
fn select(values: &[f32], shape: &[usize], index: &[usize], rows: bool) -> (Vec<f32>, Vec<usize>) {
    if shape.len() == 1 {
        return (index.iter().map(|&i| values[i]).collect(), vec![index.len()]);
    }
    let cols = shape[1];
    if rows {
        let out = index.iter().flat_map(|&r| values[r * cols..(r + 1) * cols].iter().copied()).collect();
        (out, vec![index.len(), cols])
    } else {
        let out = values.chunks_exact(cols).flat_map(|row| index.iter().map(move |&c| row[c])).collect();
        (out, vec![shape[0], index.len()])
    }
}

/// A copy of `model` with only the blocks `layers` (sorted, unique, in range), renumbered from 0.
pub fn select_layers(model: &Vit, config: &VitConfig, layers: &[usize], device: &Device) -> Result<(Vit, VitConfig), LoadError> {
    if layers.is_empty() || !layers.windows(2).all(|w| w[0] < w[1]) || layers.last().is_some_and(|&l| l >= config.num_hidden_layers) {
        return Err(ConfigError::Invalid(format!(
            "layers to keep must be sorted, unique and below {}, got {layers:?}",
            config.num_hidden_layers
        ))
        .into());
    }
    let selected = VitConfig {
        num_hidden_layers: layers.len(),
        layer_num_attention_heads: layers.iter().map(|&l| config.layer_num_attention_heads[l]).collect(),
        layer_intermediate_size: layers.iter().map(|&l| config.layer_intermediate_size[l]).collect(),
        ..config.clone()
    };
    let tensors: Vec<PackTensor> = model
        .collect(None, None, false)
        .into_iter()
        .filter_map(|mut t| {
            let Some(rest) = t.name.strip_prefix("vit.encoder.layer.") else { return Some(t) };
            let (index, param) = rest.split_once('.')?;
            let new_index = layers.iter().position(|&l| index.parse() == Ok(l))?;
            t.name = format!("vit.encoder.layer.{new_index}.{param}");
            Some(t)
        })
        .collect();
    Ok((rebuild(&selected, tensors, None, device, "selected layers")?, selected))
}

/// A copy of `model` whose position table is resized once to a `side` x `side` patch grid: what
/// every forward pass at that input size computes on the fly, so the outputs there are the same,
/// the file is smaller (DINOv2 stores a 37x37 grid) and no pass resizes it again.
pub fn resize_positions(model: &Vit, config: &VitConfig, side: usize, device: &Device) -> Result<(Vit, VitConfig), LoadError> {
    if side == 0 {
        return Err(ConfigError::Invalid("the position grid needs at least one patch".into()).into());
    }
    let resized = VitConfig { image_size: side * config.patch_size, ..config.clone() };
    let table = model.vit.embeddings.position_embeddings_for([side, side]);
    let shape = table.dims().to_vec();
    let values = table.into_data().try_into_vec::<f32>().map_err(|e| LoadError::Tensor { name: "vit.embeddings.position_embeddings".into(), message: format!("{e:?}") })?;
    let bytes = Bytes::from_bytes_vec(le::bytes(&values));
    let name = "vit.embeddings.position_embeddings";
    let tensors: Vec<PackTensor> = model
        .collect(None, None, false)
        .into_iter()
        .filter(|t| t.name != name)
        .chain([PackTensor::new(name.into(), DType::F32, shape, None, bytes)])
        .collect();
    Ok((rebuild(&resized, tensors, None, device, "resized positions")?, resized))
}
