//! `vitrine eval`: accuracy of a model on an ImageFolder split.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use vitrine_train::data::loader::{Transform, drop_unreadable, warn_unreadable};
use vitrine_train::data::{EvalSet, match_labels};
use vitrine_train::evaluate::{Columns, evaluate};
use vitrine_train::trainer::bar;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME (with a classifier whose labels name the dataset's classes).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    data: EvalData,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Print one JSON object: {"n", "images", "top1", "top5", "per_class", "confusion", "classes", "evaluated"}.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Token merging (ToMe): token pairs merged in every block, a training-free speed-up (0: off).
    #[arg(long, default_value_t = 0)]
    tome: usize,
}

/// The labelled images to evaluate on, as `vitrine eval` and `vitrine faithfulness` take them.
#[derive(clap::Args)]
pub struct EvalData {
    /// A folder of <class>/ folders (all its images), or one with train/, val/, test/.
    #[arg(long)]
    data: PathBuf,
    /// With split folders: which one (default val). On a folder of <class>/ folders alone: the
    /// seeded share that `vitrine train` would hold out (--split-seed).
    #[arg(long)]
    split: Option<String>,
    /// The seed of that share (a run's `--seed`).
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
}

impl EvalData {
    pub fn open(&self) -> Result<EvalSet> {
        EvalSet::open(&self.data, self.split.as_deref(), self.split_seed)
    }
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let mut model = source::load_for_inference(&args.model, &device)?;
    model.merge_tokens(args.tome)?;
    if !model.loaded.model.has_head() {
        bail!("{} is a backbone without a classifier; fine-tune it first (vitrine train)", args.model);
    }
    let set = args.data.open()?;
    let labels = &model.loaded.labels;
    let columns = match_labels("the model", labels, &set.classes)?;
    let all = set.samples.len();
    let (samples, bad) = drop_unreadable(set.samples);
    warn_unreadable(&bad, &set.description);
    if samples.is_empty() {
        bail!("{} has no readable images", set.description);
    }
    let evaluated = format!(
        "{} of {all} images ({}), {} classes{}",
        samples.len(),
        set.description,
        set.classes.len(),
        if labels.len() > set.classes.len() { format!(" of the model's {} (predictions among these)", labels.len()) } else { String::new() }
    );
    eprintln!("evaluating {evaluated}");
    let progress = bar(samples.len() as u64, "evaluating");
    let transform = Arc::new(Transform::Eval(model.preprocess.clone()));
    let result = evaluate(&model.loaded.model, Arc::new(samples), transform, Columns::Of(&columns), args.batch_size, &device, &progress)?;
    progress.finish_and_clear();
    let per_class: BTreeMap<&str, f64> = set.classes.iter().map(String::as_str).zip(result.recall()).collect();
    if args.json {
        let json = serde_json::json!({
            "n": result.n,
            "images": all,
            "top1": result.top1,
            "top5": result.top5,
            "per_class": per_class,
            "confusion": result.confusion,
            "classes": set.classes,
            "evaluated": evaluated,
        });
        println!("{json}");
    } else {
        println!("{evaluated}: top-1 {:.2}%, top-5 {:.2}%", 100.0 * result.top1, 100.0 * result.top5);
        for (class, accuracy) in &per_class {
            println!("  {class:<24} {:.2}%", 100.0 * accuracy);
        }
    }
    Ok(())
}
