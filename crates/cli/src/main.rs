//! `vitrine`: Vision Transformers from Hugging Face checkpoints, on burn.

mod cmd;
mod device;
mod source;

use clap::{Parser, Subcommand};

/// Vision Transformers (ViT, DeiT, DINOv2) from Hugging Face checkpoints, on burn.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify images with a model.
    Predict(cmd::predict::Args),
    /// Show a model's architecture, parameter count, size and labels.
    Inspect(cmd::inspect::Args),
    /// Time the forward pass of one or more models in the same run.
    Bench(cmd::bench::Args),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Predict(args) => cmd::predict::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line with every cause, not a backtrace: these are user errors.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
