//! `vitrine faithfulness`: the perturbation tests of explanation maps on a labelled folder.

use anyhow::{Result, bail};
use vitrine_train::data::loader::epoch_order;
use vitrine_train::data::match_labels;
use vitrine_train::faithfulness::measure;
use vitrine_train::trainer::bar;

use super::eval::EvalData;
use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME (a classifier whose labels name the dataset's classes).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    data: EvalData,
    /// Images to test, a seeded draw over the whole split (0: all).
    #[arg(long, default_value_t = 500)]
    images: usize,
    /// Steps of the curves: 0, 1/steps, ..., (steps - 1)/steps of the patches blanked.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Print one JSON object: {"images", "fractions", "curves": [{"explainer", "positive", "negative", "positive_auc", "negative_auc"}]}.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let model = source::load(&args.model, &device)?;
    if !model.loaded.model.has_head() {
        bail!("{} is a backbone without a classifier: explanations are for a class", args.model);
    }
    let set = args.data.open()?;
    let columns = match_labels("the model", &model.loaded.labels, &set.classes)?;
    let take = if args.images == 0 { set.samples.len() } else { args.images.min(set.samples.len()) };
    let samples: Vec<_> = epoch_order(set.samples.len(), Some((0, 0))).into_iter().take(take).map(|i| set.samples[i].clone()).collect();
    if samples.is_empty() {
        bail!("{} has no images", set.description);
    }
    eprintln!("faithfulness on {take} of {} images ({}), {} steps", set.samples.len(), set.description, args.steps);
    let progress = bar(take as u64, "explaining");
    let result = measure(&model.loaded.model, &samples, &model.preprocess, &columns, args.steps, &device, &progress)?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!("{} images, each explained for its predicted class; top-1 accuracy as its patches are blanked", result.images);
    println!("{:<16} {:>30} {:>30}", "map", "positive AUC (lower: better)", "negative AUC (higher: better)");
    for curve in &result.curves {
        println!("{:<16} {:>29.2}% {:>29.2}%", curve.explainer, 100.0 * curve.positive_auc, 100.0 * curve.negative_auc);
    }
    Ok(())
}
