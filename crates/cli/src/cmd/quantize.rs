//! `vitrine quantize`: a bundle with its weights stored as int8 (per output channel) or f16.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;
use vitrine_model::Storage;

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
    let hf_config = &model.loaded.hf_config;
    vitrine_train::bundle::write_as(&args.out, &model.loaded.model, hf_config, hf_config.model_type()?, &model.preprocess, storage)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let written = std::fs::metadata(args.out.join(vitrine_train::bundle::WEIGHTS))?.len();
    println!(
        "wrote {}: {:.2} MB -> {:.2} MB ({:.2}x smaller)",
        args.out.display(),
        model.weight_bytes as f64 / 1e6,
        written as f64 / 1e6,
        model.weight_bytes as f64 / written as f64
    );
    Ok(())
}
