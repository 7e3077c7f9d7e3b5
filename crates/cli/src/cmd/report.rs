//! `vitrine report`: rebuild a run's HTML report, optionally beside other runs.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Run folder written by `vitrine train`.
    run: PathBuf,
    /// Other runs to compare with, side by side.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let path = vitrine_train::report::write_with(&args.run, &args.compare)?;
    println!("wrote {}", path.display());
    Ok(())
}
