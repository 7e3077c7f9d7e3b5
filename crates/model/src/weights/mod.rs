//! Weights in and out: Hugging Face safetensors (ViT, DeiT, DINOv2 names, and timm's) onto [`Vit`].
//!
//! Loading is strict: every parameter must come from the file with the right shape, and every
//! tensor of the file must land somewhere or be on its family's short ignore list. Names and shapes
//! are checked in the file's own terms (PyTorch layout) before anything is applied, so errors name
//! what a user can find in their checkpoint. The library takes bytes, never paths, so the same code
//! runs in the browser.

pub mod adapter;
pub mod le;
mod names;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor};
use burn_store::burn_pack::{Bytes, Error as PackError, Tensor as PackTensor};
use burn_store::{ApplyError, ModuleContext, ModuleSnapshot};
use safetensors::{Dtype, SafeTensors};

pub use names::{Family, Mapped, to_canonical, to_hf};
pub use storage::Storage;

use crate::config::{Head, HfVitConfig, ModelType, VitConfig};
use crate::error::LoadError;
use crate::model::Vit;
use crate::preprocess::PreprocessConfig;

/// A model loaded from a checkpoint, with what it was built from.
#[derive(Debug)]
pub struct Loaded {
    pub model: Vit,
    pub config: VitConfig,
    /// The parsed `config.json`, kept so that an export can write it back.
    pub hf_config: HfVitConfig,
    /// Class names in index order (empty for a backbone).
    pub labels: Vec<String>,
    /// Which naming the weights used.
    pub family: Family,
}

impl Loaded {
    /// For inference: an int8 bundle computes its blocks' products in int8 where the device and CPU
    /// can ([`Vit::with_int8_products`]); other bundles stay as they are.
    pub fn int8_products_if_stored(mut self) -> Self {
        if Storage::recorded(self.hf_config.quantization.as_ref()) == Storage::Int8 {
            self.model = self.model.with_int8_products();
        }
        self
    }
}

/// [`load_bundle`] for inference: an int8 bundle computes its blocks' products in int8 where the
/// device and CPU can, its weights going straight from the file's integers to the products'
/// layout (no f32 rebuild, no second quantization); anything else loads as [`load_bundle`] loads
/// it, then takes [`Loaded::int8_products_if_stored`].
pub fn load_bundle_for_inference(
    config_json: &str,
    safetensors: &[u8],
    preprocessor_json: Option<&str>,
    device: &Device,
) -> Result<(Loaded, PreprocessConfig), LoadError> {
    let loaded = load_safetensors_as(config_json, safetensors, device, Int8Weights::AsStored)?.int8_products_if_stored();
    with_preprocessing(loaded, preprocessor_json)
}

/// A model bundle's three files (`config.json`, `model.safetensors`, and `preprocessor_config.json`
/// where the bundle has one) loaded together: the model, and the preprocessing it was trained with,
/// checked against it. Without a preprocessor file the family's Hugging Face defaults apply.
pub fn load_bundle(
    config_json: &str,
    safetensors: &[u8],
    preprocessor_json: Option<&str>,
    device: &Device,
) -> Result<(Loaded, PreprocessConfig), LoadError> {
    with_preprocessing(load_safetensors(config_json, safetensors, device)?, preprocessor_json)
}

/// `loaded` with its preprocessing, checked against it (the family's defaults without a file).
fn with_preprocessing(loaded: Loaded, preprocessor_json: Option<&str>) -> Result<(Loaded, PreprocessConfig), LoadError> {
    let preprocess = match preprocessor_json {
        Some(json) => PreprocessConfig::from_json(json).map_err(LoadError::Preprocessor)?,
        None => PreprocessConfig::default_for(&loaded.config),
    };
    preprocess.check_fits(&loaded.config).map_err(LoadError::Preprocessor)?;
    Ok((loaded, preprocess))
}

/// Builds the model described by `config_json` (HF `config.json`) and loads `safetensors` into it.
pub fn load_safetensors(config_json: &str, safetensors: &[u8], device: &Device) -> Result<Loaded, LoadError> {
    load_safetensors_as(config_json, safetensors, device, Int8Weights::AsF32)
}

/// How an int8 bundle's weights load.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Int8Weights {
    /// Rebuilt in f32: what training, pruning, export and every backend can use.
    AsF32,
    /// The stored integers themselves, for int8 products, where they serve the device; else f32.
    AsStored,
}

fn load_safetensors_as(config_json: &str, safetensors: &[u8], device: &Device, int8_weights: Int8Weights) -> Result<Loaded, LoadError> {
    let hf_config = HfVitConfig::from_json(config_json)?;
    let model_type = hf_config.model_type()?;
    let file = SafeTensors::deserialize(safetensors).map_err(|e| LoadError::Safetensors(diagnose(safetensors, e)))?;
    let names: BTreeSet<String> = file.names().into_iter().map(str::to_string).collect();

    let family = if names.contains("pos_embed") || names.iter().any(|n| n.starts_with("blocks.")) {
        Family::Timm
    } else {
        Family::Hf(model_type)
    };
    let canonical: BTreeSet<String> = names
        .iter()
        .filter_map(|n| match to_canonical(family, n) {
            Mapped::To(name) => Some(name),
            _ => None,
        })
        .collect();
    let head = match (canonical.contains("classifier.weight"), canonical.contains("distillation_classifier.weight")) {
        (true, true) => Head::LinearWithDistillation,
        (true, false) => Head::Linear,
        (false, _) => Head::None,
    };
    let config = hf_config.to_vit_config(head)?;
    check_size_against_file(&config, &file, family)?;
    let labels = if head == Head::None { Vec::new() } else { hf_config.labels()? };
    let mut model = config.init(device);
    load_into(&mut model, &file, family, int8_weights)?;
    Ok(Loaded { model, config, hf_config, labels, family })
}

/// Refuses a config whose model is not the file's, before any of it is built: the number of blocks
/// and the position table (which fixes `image_size`) are compared with the file's tensors, so that
/// a `config.json` of a million layers or 100000 px images is an error, not a huge allocation.
/// Everything else is checked, tensor by tensor, as the weights load.
fn check_size_against_file(config: &VitConfig, file: &SafeTensors, family: Family) -> Result<(), LoadError> {
    let mut layers = BTreeSet::new();
    let mut positions = None;
    for (name, view) in file.tensors() {
        let canonical = match to_canonical(family, &name) {
            Mapped::To(canonical) => canonical,
            Mapped::SplitQkv { prefix, .. } => prefix,
            Mapped::Ignored | Mapped::Unknown => continue,
        };
        if let Some(index) = canonical.strip_prefix("vit.encoder.layer.").and_then(|rest| rest.split('.').next()) {
            layers.insert(index.to_string());
        } else if canonical == "vit.embeddings.position_embeddings" {
            positions = Some(view.shape().to_vec());
        }
    }
    let invalid = |message: String| LoadError::Config(crate::ConfigError::Invalid(message));
    if layers.len() != config.num_hidden_layers {
        return Err(invalid(format!(
            "config.json has num_hidden_layers {}, the weights hold {} blocks",
            config.num_hidden_layers,
            layers.len()
        )));
    }
    let grid = config.grid_size();
    let expected = grid.checked_mul(grid).and_then(|n| n.checked_add(config.num_prefix_tokens()));
    if let Some(shape) = positions
        && shape.get(1).copied() != expected
    {
        return Err(invalid(format!(
            "config.json's image_size {} and patch_size {} make {} positions, the weights' position table is {shape:?}",
            config.image_size,
            config.patch_size,
            expected.map_or("too many".to_string(), |n| n.to_string())
        )));
    }
    Ok(())
}

/// What a file that is not safetensors is, where that is recognisable (a web page or a Git LFS
/// pointer saved in its place, a header naming a tensor twice), else `error` as it is.
fn diagnose(bytes: &[u8], error: safetensors::SafeTensorError) -> String {
    let start = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).trim_start().to_ascii_lowercase();
    if start.starts_with('<') {
        return "the file is an HTML page, not weights (a login or error page saved in place of the download?)".into();
    }
    if start.starts_with("version https://git-lfs") {
        return "the file is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)".into();
    }
    if let Some(name) = duplicated_tensor(bytes) {
        return format!("the header names tensor {name:?} twice");
    }
    error.to_string()
}

/// A tensor name that the safetensors header (JSON) holds more than once; its parser keeps the
/// last, and then reports the overlap as an invalid offset of another tensor.
fn duplicated_tensor(bytes: &[u8]) -> Option<String> {
    struct FirstDuplicate(Option<String>);
    impl<'de> serde::de::Visitor<'de> for &mut FirstDuplicate {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) && self.0.is_none() {
                    self.0 = Some(key);
                }
            }
            Ok(())
        }
    }
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let mut found = FirstDuplicate(None);
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_slice(header), &mut found).ok()?;
    found.0
}

/// Loads every tensor of `file` into `model`, strictly.
fn load_into(model: &mut Vit, file: &SafeTensors, family: Family, int8_weights: Int8Weights) -> Result<(), LoadError> {
    let device = model.devices().into_iter().next().expect("a model lives on a device");
    let expected = expected_shapes(model);
    let file_name = |canonical: &str| match family {
        Family::Hf(model_type) => {
            to_hf(model_type, canonical, model.has_head(), model.distillation_classifier.is_some())
        }
        Family::Timm => canonical.to_string(),
    };

    let mut tensors = Vec::new();
    // int8 block weights kept as their integers (`Int8Weights::AsStored`), by their Linear's path.
    let mut stored_int8: BTreeMap<String, Tensor<2>> = BTreeMap::new();
    let mut unexpected = Vec::new();
    // In name order, so that the first error reported is the same on every run.
    let mut entries = file.tensors();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // int8 weights carry a `<name>_scale` beside them; the scales are read with their weights.
    let int8: BTreeSet<String> = entries.iter().filter(|(_, v)| v.dtype() == Dtype::I8).map(|(n, _)| n.clone()).collect();
    for (name, view) in entries {
        if let Some(base) = name.strip_suffix(storage::SCALE_SUFFIX)
            && int8.contains(base)
        {
            continue;
        }
        let targets = match to_canonical(family, &name) {
            Mapped::To(canonical) => vec![(canonical, 0, 1)],
            Mapped::SplitQkv { prefix, param } => ["query", "key", "value"]
                .iter()
                .enumerate()
                .map(|(i, part)| (format!("{prefix}.{part}.{param}"), i, 3))
                .collect(),
            Mapped::Ignored => continue,
            Mapped::Unknown => {
                unexpected.push(name);
                continue;
            }
        };
        let shape = view.shape().to_vec();
        let mut values = None; // converted once, after the first part's shape is checked
        for (canonical, part, parts) in targets {
            let Some(want) = expected.get(&canonical) else {
                unexpected.push(name.clone());
                break;
            };
            // A fused tensor is `parts` equal blocks along its first axis.
            let mut part_shape = shape.clone();
            if parts > 1 {
                if shape.first().is_none_or(|rows| rows % parts != 0) {
                    return Err(LoadError::Tensor { name, message: format!("shape {shape:?} does not split in {parts}") });
                }
                part_shape[0] /= parts;
            }
            if &part_shape != want {
                return Err(LoadError::Shape { name: name.clone(), expected: want.clone(), found: shape });
            }
            if int8_weights == Int8Weights::AsStored && parts == 1 && view.dtype() == Dtype::I8 && storage::is_quantized_weight(&canonical) {
                let scales = int8_scales(file, &name, &shape)?;
                // SAFETY: i8 and u8 have the same size and alignment.
                let q = unsafe { std::slice::from_raw_parts(view.data().as_ptr().cast::<i8>(), view.data().len()) };
                if let Some(weight) = vitrine_kernels::int8_weight_from_rows(q, &scales, shape[1], &device) {
                    stored_int8.insert(canonical.trim_end_matches(".weight").to_string(), weight);
                    continue;
                }
            }
            if values.is_none() {
                values = Some(finite_f32_bytes(file, &name, &view)?);
            }
            let bytes = if parts == 1 {
                values.take().expect("converted above")
            } else {
                let values = values.as_deref().expect("converted above");
                let block = values.len() / parts;
                values[part * block..(part + 1) * block].to_vec()
            };
            tensors.push(PackTensor::new(canonical, DType::F32, part_shape, None, Bytes::from_bytes_vec(bytes)));
        }
    }
    if !unexpected.is_empty() {
        return Err(LoadError::UnexpectedKeys(unexpected));
    }
    let kept: BTreeSet<String> = stored_int8.keys().map(|path| format!("{path}.weight")).collect();
    let provided: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).chain(kept.iter().map(String::as_str)).collect();
    let missing: Vec<String> =
        expected.keys().filter(|k| !provided.contains(k.as_str())).map(|k| file_name(k)).collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingKeys(missing));
    }

    let result = model.apply(tensors, None, Some(adapter::to_burn()), false);
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch { path, expected, found } => LoadError::Shape {
                name: path.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => LoadError::Tensor { name: String::new(), message: other.to_string() },
        });
    }
    let missing: Vec<String> = result.missing.into_iter().map(|(path, _)| path).filter(|path| !kept.contains(path)).collect();
    if !missing.is_empty() {
        return Err(LoadError::MissingKeys(missing));
    }
    for (path, linear) in model.block_linears_mut() {
        if let Some(weight) = stored_int8.remove(&path) {
            linear.weight = Param::initialized(linear.weight.id, weight);
        }
    }
    // Only block Linear weights are kept as int8, and each has its layer: nothing may be left over
    // (a weight left out would keep its placeholder values).
    if let Some(path) = stored_int8.keys().next() {
        return Err(LoadError::Tensor { name: format!("{path}.weight"), message: "an int8 weight with no block Linear to hold it".into() });
    }
    Ok(())
}

/// The model's parameters in PyTorch layout and names: what a file must provide.
///
/// Read from the parameters' shapes alone: `config.init` leaves them uninitialized (burn's lazy
/// parameters) until the file's values replace them, while collecting them would first fill every
/// one with random values (a third of a ViT-B's load natively, more in wasm).
fn expected_shapes(model: &Vit) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = ExpectedShapes::default();
    model.visit(&mut shapes);
    shapes.found
}

/// [`expected_shapes`]' walk: each parameter's path and lazy shape, through the same adapter as
/// a save, on a placeholder whose bytes are never read.
#[derive(Default)]
struct ExpectedShapes {
    path: Vec<String>,
    containers: Vec<String>,
    found: BTreeMap<String, Vec<usize>>,
}

impl ModuleVisitor for ExpectedShapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape();
        let bytes = shape.num_elements() * DType::F32.size();
        let unread = || Err(PackError::ValidationError("a placeholder for its name and shape".to_string()));
        let placeholder = PackTensor::deferred(self.path.join("."), DType::F32, shape, None, bytes, unread);
        let adapted = adapter::to_pytorch().adapt(placeholder, ModuleContext::new(&self.containers));
        self.found.insert(adapted.name, adapted.shape.to_vec());
    }
}

/// Little-endian f32 bytes of tensor `name` (converted from its dtype, int8 dequantized), refused
/// if any value is NaN or infinite.
fn finite_f32_bytes(file: &SafeTensors, name: &str, view: &safetensors::tensor::TensorView) -> Result<Vec<u8>, LoadError> {
    let values = match view.dtype() {
        Dtype::I8 => dequantize(file, name, view.shape(), view.data())?,
        dtype => to_f32_bytes(name, dtype, view.data())?,
    };
    let non_finite = values.chunks_exact(4).filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()).count();
    if non_finite > 0 {
        let message = format!("holds {non_finite} NaN or infinite values (the checkpoint is damaged, or training diverged)");
        return Err(LoadError::Tensor { name: name.to_string(), message });
    }
    Ok(values)
}

/// f32 bytes of the int8 matrix `name` times its per-row scales `<name>_scale`.
fn dequantize(file: &SafeTensors, name: &str, shape: &[usize], data: &[u8]) -> Result<Vec<u8>, LoadError> {
    Ok(storage::dequantize_rows(data, &int8_scales(file, name, shape)?))
}

/// The per-row scales `<name>_scale` of the int8 matrix `name`, checked: F32, one per row, finite.
fn int8_scales(file: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
    let scale_name = format!("{name}{}", storage::SCALE_SUFFIX);
    let bad = |message: String| LoadError::Tensor { name: name.to_string(), message };
    let scale = file.tensor(&scale_name).map_err(|_| bad(format!("an int8 tensor needs its scales in {scale_name}")))?;
    if shape.len() != 2 || scale.dtype() != Dtype::F32 || scale.shape() != [shape[0]] {
        return Err(bad(format!(
            "{scale_name} must be F32 [{}] for an int8 [rows, cols] matrix, got {:?} {:?}",
            shape.first().copied().unwrap_or(0),
            scale.dtype(),
            scale.shape()
        )));
    }
    let scales = le::f32s(scale.data());
    if scales.iter().any(|s| !s.is_finite()) {
        return Err(bad(format!("{scale_name} holds non-finite scales")));
    }
    Ok(scales)
}

/// Little-endian f32 bytes of a tensor stored as f32, f16, bf16 or f64.
fn to_f32_bytes(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<u8>, LoadError> {
    let convert = |width: usize, f: &dyn Fn(&[u8]) -> f32| -> Vec<u8> { le::bytes_of(data.chunks_exact(width).map(|c| f(c).to_le_bytes())) };
    Ok(match dtype {
        Dtype::F32 => data.to_vec(),
        Dtype::F16 => convert(2, &|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        Dtype::BF16 => convert(2, &|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        Dtype::F64 => convert(8, &|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32),
        other => return Err(LoadError::UnsupportedDtype { name: name.to_string(), dtype: format!("{other:?}") }),
    })
}

/// The model's weights as a Hugging Face `model.safetensors` for `model_type` (f32), which
/// transformers loads into `*ForImageClassification` (or `*Model` for a backbone).
pub fn save_safetensors(model: &Vit, model_type: ModelType) -> Result<Vec<u8>, LoadError> {
    save_safetensors_as(model, model_type, Storage::F32)
}

/// Like [`save_safetensors`], stored as `storage` (f16, or int8 block weights with per-channel
/// scales: see [`storage`]). transformers reads f32 and f16 files; int8 ones load in vitrine.
pub fn save_safetensors_as(model: &Vit, model_type: ModelType, storage: Storage) -> Result<Vec<u8>, LoadError> {
    let with_head = model.has_head();
    let teacher = model.distillation_classifier.is_some();
    let mut named: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for tensor in model.collect(None, Some(adapter::to_pytorch()), false) {
        let name = to_hf(model_type, &tensor.name, with_head, teacher);
        let shape = tensor.shape.to_vec();
        let bytes = tensor
            .to_bytes()
            .map_err(|e| LoadError::Tensor { name: name.clone(), message: e.to_string() })?;
        let values = le::f32s(&bytes);
        match storage {
            Storage::Int8 if storage::is_quantized_weight(&tensor.name) => {
                let (q, scales) = storage::quantize_rows(&values, shape[0]);
                named.push((format!("{name}{}", storage::SCALE_SUFFIX), Dtype::F32, vec![shape[0]], storage::float_bytes(&scales, Dtype::F32)));
                named.push((name, Dtype::I8, shape, q.into_iter().map(|v| v as u8).collect()));
            }
            Storage::F16 => named.push((name, Dtype::F16, shape, storage::float_bytes(&values, Dtype::F16))),
            _ => named.push((name, Dtype::F32, shape, bytes.to_vec())),
        }
    }
    let views = named
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| LoadError::Safetensors(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize(views, metadata).map_err(|e| LoadError::Safetensors(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// How many float parameters have their values yet.
    #[derive(Default)]
    struct Initialized {
        yes: usize,
        no: usize,
    }

    impl ModuleVisitor for Initialized {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_initialized() { self.yes += 1 } else { self.no += 1 }
        }
    }

    #[test]
    fn expected_shapes_are_what_a_save_collects_and_initialize_nothing() {
        let device = Device::flex();
        for name in ["vit", "deit", "dinov2", "dinov2_backbone", "vit_timm"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
            let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
            let loaded = load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), &device).unwrap();
            let collected: BTreeMap<String, Vec<usize>> = loaded
                .model
                .collect(None, Some(adapter::to_pytorch()), false)
                .into_iter()
                .map(|t| (t.name.clone(), t.shape.to_vec()))
                .collect();
            assert_eq!(expected_shapes(&loaded.model), collected, "{name}");

            let fresh = loaded.config.init(&device);
            let mut before = Initialized::default();
            fresh.visit(&mut before);
            assert!(before.no > 0, "{name}: the parameters of a new model are lazy");
            let _ = expected_shapes(&fresh);
            let mut after = Initialized::default();
            fresh.visit(&mut after);
            assert_eq!((after.yes, after.no), (before.yes, before.no), "{name}: reading the shapes initialized parameters");
        }
    }
}
