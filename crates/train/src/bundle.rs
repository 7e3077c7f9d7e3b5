//! Model bundles: the Hugging Face-style folder that transformers, `vitrine` and the browser load
//! (`config.json` with `id2label`/`label2id`, `preprocessor_config.json`, `model.safetensors`).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use vitrine_model::{HfVitConfig, Loaded, ModelType, PreprocessConfig, Storage, Vit, load_bundle, save_safetensors_as};

use crate::checkpoint::write_atomic;

/// A bundle's files: the HF config with labels, the weights, and the preprocessing (optional on read).
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const PREPROCESSOR: &str = "preprocessor_config.json";

/// A bundle read back from its folder.
pub struct Bundle {
    pub loaded: Loaded,
    /// `preprocessor_config.json`, or the family's default when the folder has none.
    pub preprocess: PreprocessConfig,
    /// Bytes of `model.safetensors`.
    pub weight_bytes: u64,
}

/// Reads the bundle in `dir` onto `device`.
pub fn read(dir: &Path, device: &Device) -> Result<Bundle> {
    read_with(dir, device, load_bundle)
}

/// [`read`] for inference: an int8 bundle computes in int8 where it can, straight from its stored
/// integers ([`vitrine_model::load_bundle_for_inference`]).
pub fn read_for_inference(dir: &Path, device: &Device) -> Result<Bundle> {
    read_with(dir, device, vitrine_model::load_bundle_for_inference)
}

type LoadBundle = fn(&str, &[u8], Option<&str>, &Device) -> Result<(Loaded, PreprocessConfig), vitrine_model::LoadError>;

fn read_with(dir: &Path, device: &Device, load: LoadBundle) -> Result<Bundle> {
    let read_to_string = |path: &Path| fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
    let config = read_to_string(&dir.join(CONFIG))?;
    let weights_path = dir.join(WEIGHTS);
    let weights = fs::read(&weights_path).with_context(|| format!("cannot read {}", weights_path.display()))?;
    let preprocess_path = dir.join(PREPROCESSOR);
    let preprocessor = preprocess_path.exists().then(|| read_to_string(&preprocess_path)).transpose()?;
    let (loaded, preprocess) = load(&config, &weights, preprocessor.as_deref(), device)
        .with_context(|| format!("cannot load the model bundle in {}", dir.display()))?;
    Ok(Bundle { loaded, preprocess, weight_bytes: weights.len() as u64 })
}

/// `config.json` text: the HF config with `label2id` beside `id2label`.
pub fn config_json(hf_config: &HfVitConfig) -> Result<String> {
    let mut json = serde_json::to_value(hf_config)?;
    let label2id: serde_json::Map<String, serde_json::Value> = hf_config
        .id2label
        .iter()
        .map(|(id, label)| (label.clone(), serde_json::json!(id.parse::<usize>().unwrap_or(0))))
        .collect();
    json["label2id"] = serde_json::Value::Object(label2id);
    // transformers' Dinov2Config validates `mlp_ratio` as an int when it is a whole number.
    if let Some(ratio) = hf_config.mlp_ratio.filter(|r| r.fract() == 0.0) {
        json["mlp_ratio"] = serde_json::json!(ratio as u64);
    }
    Ok(serde_json::to_string_pretty(&json)?)
}

/// Writes a bundle into `dir` (created if needed), weights in f32. Files are replaced one by one, atomically.
pub fn write(dir: &Path, model: &Vit, hf_config: &HfVitConfig, model_type: ModelType, preprocess: &PreprocessConfig) -> Result<()> {
    write_as(dir, model, hf_config, model_type, preprocess, Storage::F32)
}

/// Like [`write`], with the weights stored as `storage` (recorded under `quantization` in config.json).
pub fn write_as(
    dir: &Path,
    model: &Vit,
    hf_config: &HfVitConfig,
    model_type: ModelType,
    preprocess: &PreprocessConfig,
    storage: Storage,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = save_safetensors_as(model, model_type, storage)?;
    write_atomic(&dir.join(WEIGHTS), &weights)?;
    let hf_config = HfVitConfig { quantization: storage.config_entry(), ..hf_config.clone() };
    write_atomic(&dir.join(CONFIG), config_json(&hf_config)?.as_bytes())?;
    let preprocessor = serde_json::to_string_pretty(&preprocess.to_json(model_type))?;
    write_atomic(&dir.join(PREPROCESSOR), preprocessor.as_bytes())
}

/// Replaces the bundle at `dir` as a whole: written beside it, then swapped in by renames, so that
/// a crash leaves either the old bundle or the new one.
pub fn replace(dir: &Path, model: &Vit, hf_config: &HfVitConfig, model_type: ModelType, preprocess: &PreprocessConfig) -> Result<()> {
    let fresh = dir.with_extension("new");
    let old = dir.with_extension("old");
    let _ = fs::remove_dir_all(&fresh);
    write(&fresh, model, hf_config, model_type, preprocess)?;
    let _ = fs::remove_dir_all(&old);
    if dir.exists() {
        fs::rename(dir, &old)?;
    }
    fs::rename(&fresh, dir)?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}
