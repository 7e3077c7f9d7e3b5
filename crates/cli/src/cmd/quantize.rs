//! `vitrine quantize`: a bundle with its weights stored as int8 (per output channel) or f16.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use vitrine_model::{Storage, save_safetensors_as};

use crate::device::DeviceKind;
use crate::source;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scheme {
    /// Block Linear weights as int8 with one f32 scale per output channel (about 4x smaller).
    Int8,
    /// Every weight as f16 (2x smaller).
    F16,
}

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME.
    #[arg(long)]
    model: String,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Scheme::Int8)]
    scheme: Scheme,
}

pub fn run(args: Args) -> Result<()> {
    let model = source::load(&args.model, &DeviceKind::Cpu.device()?)?;
    let storage = match args.scheme {
        Scheme::Int8 => Storage::Int8,
        Scheme::F16 => Storage::F16,
    };
    let model_type = model.loaded.hf_config.model_type()?;
    let weights = save_safetensors_as(&model.loaded.model, model_type, storage)?;
    let mut hf_config = model.loaded.hf_config.clone();
    hf_config.quantization = storage.config_entry();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let write = |name: &str, bytes: &[u8]| vitrine_train::checkpoint::write_atomic(&args.out.join(name), bytes);
    write("model.safetensors", &weights)?;
    write("config.json", vitrine_train::bundle::config_json(&hf_config)?.as_bytes())?;
    write("preprocessor_config.json", serde_json::to_string_pretty(&model.preprocess.to_json(model_type))?.as_bytes())?;
    println!(
        "wrote {}: {:.2} MB -> {:.2} MB ({:.2}x smaller)",
        args.out.display(),
        model.weight_bytes as f64 / 1e6,
        weights.len() as f64 / 1e6,
        model.weight_bytes as f64 / weights.len() as f64
    );
    Ok(())
}
