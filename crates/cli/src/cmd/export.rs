//! `vitrine export`: a run's best model as a Hugging Face-style bundle.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use vitrine_train::bundle::{CONFIG, PREPROCESSOR, WEIGHTS};

#[derive(clap::Args)]
pub struct Args {
    /// Run folder written by `vitrine train`.
    run: PathBuf,
    /// Bundle folder to write (config.json, preprocessor_config.json, model.safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let best = args.run.join("best");
    if !best.join(WEIGHTS).exists() {
        bail!("{} has no best model yet (no epoch has finished)", args.run.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for name in [CONFIG, PREPROCESSOR, WEIGHTS] {
        let (from, to) = (best.join(name), args.out.join(name));
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        vitrine_train::checkpoint::write_atomic(&to, &bytes)?;
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
