//! `vitrine eval`: accuracy of a model on an ImageFolder split.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use vitrine_train::data::{ImageFolder, check_labels};
use vitrine_train::data::loader::{Transform, drop_unreadable};
use vitrine_train::evaluate::evaluate;
use vitrine_train::trainer::bar;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME (with a classifier for the dataset's classes).
    #[arg(long)]
    model: String,
    /// ImageFolder root.
    #[arg(long)]
    data: PathBuf,
    /// Split to evaluate: val, test or train.
    #[arg(long, default_value = "val")]
    split: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print one JSON object: {"n", "top1", "top5", "per_class", "confusion"}.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Token merging (ToMe): token pairs merged in every block, a training-free speed-up (0: off).
    #[arg(long, default_value_t = 0)]
    tome: usize,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let mut model = source::load(&args.model, &device)?;
    model.loaded.model = model.loaded.model.with_token_merging(args.tome);
    let data = ImageFolder::open(&args.data, 0)?;
    if !model.loaded.model.has_head() {
        bail!("{} is a backbone without a classifier; fine-tune it first (vitrine train)", args.model);
    }
    check_labels("the model", &model.loaded.labels, &data.classes)?;
    let (samples, bad) = drop_unreadable(data.split(&args.split)?.to_vec());
    if !bad.is_empty() {
        eprintln!("warning: skipping {} unreadable images", bad.len());
    }
    if samples.is_empty() {
        bail!("the {} split has no readable images", args.split);
    }
    let progress = bar(samples.len() as u64, "evaluating");
    let transform = Arc::new(Transform::Eval(model.preprocess.clone()));
    let result = evaluate(&model.loaded.model, Arc::new(samples), transform, data.classes.len(), args.batch_size, &device, &progress)?;
    progress.finish_and_clear();
    let per_class: BTreeMap<&str, f64> = data.classes.iter().map(String::as_str).zip(result.recall()).collect();
    if args.json {
        let json = serde_json::json!({
            "n": result.n,
            "top1": result.top1,
            "top5": result.top5,
            "per_class": per_class,
            "confusion": result.confusion,
        });
        println!("{json}");
    } else {
        println!("{} images: top-1 {:.2}%, top-5 {:.2}%", result.n, 100.0 * result.top1, 100.0 * result.top5);
        for (class, accuracy) in &per_class {
            println!("  {class:<24} {:.2}%", 100.0 * accuracy);
        }
    }
    Ok(())
}
