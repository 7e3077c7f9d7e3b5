//! `vitrine`: Vision Transformers from Hugging Face checkpoints, on burn.

mod cmd;
mod device;
mod memory;
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
    /// Fine-tune a pretrained model on an ImageFolder dataset (or resume a run).
    Train(cmd::train::Args),
    /// Where a model looked for a class: relevance or attention maps over images, as PNGs and HTML.
    Explain(cmd::explain::Args),
    /// How faithful explanation maps are: accuracy as the patches they rank first (or last) are blanked.
    Faithfulness(cmd::faithfulness::Args),
    /// Accuracy of a model on an ImageFolder split.
    Eval(cmd::eval::Args),
    /// Write a run's best model as a Hugging Face-style bundle.
    Export(cmd::export::Args),
    /// Rebuild a run's HTML report, optionally compared with other runs.
    Report(cmd::report::Args),
    /// Remove the least important attention heads (and MLP neurons), measured on data.
    Prune(cmd::prune::Args),
    /// Store a model's weights as int8 (per output channel) or f16.
    Quantize(cmd::quantize::Args),
    /// Train a smaller ViT from a teacher's outputs (soft or hard distillation).
    Distill(cmd::distill::Args),
    /// The whole pipeline: distil, prune, fine-tune, int8; resumable step by step, with a report.
    Compress(cmd::compress::Args),
}

fn main() -> std::process::ExitCode {
    memory::keep_freed_buffers();
    let result = match Cli::parse().command {
        Command::Predict(args) => cmd::predict::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Explain(args) => cmd::explain::run(args),
        Command::Faithfulness(args) => cmd::faithfulness::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::Prune(args) => cmd::prune::run(args),
        Command::Quantize(args) => cmd::quantize::run(args),
        Command::Distill(args) => cmd::distill::run(args),
        Command::Compress(args) => cmd::compress::run(args),
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
