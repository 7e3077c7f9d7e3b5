//! `vitrine train`: fine-tune a pretrained ViT on an ImageFolder dataset (or `--resume` a run).

use std::path::PathBuf;

use anyhow::{Result, bail};
use vitrine_train::data::augment::Augment;
use vitrine_train::recipe::Recipe;
use vitrine_train::trainer;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Pretrained model: a folder (config.json + model.safetensors) or hf:ORG/NAME.
    #[arg(long, required_unless_present = "resume")]
    model: Option<String>,
    /// ImageFolder root: train/ and val/ (and optionally test/) of <class>/<image>, or <class>/<image>.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run folder: checkpoints, metrics, the best model and the report go here.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (other options are read from it).
    #[arg(long, conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
}

/// The training options shared by `train` and `distill`.
#[derive(clap::Args)]
pub struct RecipeArgs {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Forward passes per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accumulation: usize,
    /// Peak learning rate of the head.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Layer-wise learning-rate decay per block from the top (1 = off).
    #[arg(long, default_value_t = 0.75)]
    layer_decay: f64,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Linear warmup length in epochs.
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Dropout on the classifier input.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Stochastic depth at the last block.
    #[arg(long, default_value_t = 0.1)]
    drop_path: f64,
    /// PatchDropout: fraction of each training image's patch tokens dropped at the input of the
    /// first trained block (0 = off); evaluation keeps every token.
    #[arg(long, default_value_t = 0.0)]
    patch_dropout: f64,
    /// Square input side in pixels (a multiple of the patch size).
    #[arg(long, default_value_t = 224)]
    image_size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bottom blocks never trained (with the embeddings).
    #[arg(long, default_value_t = 0)]
    frozen_blocks: usize,
    /// Compute the frozen blocks once per image and view, and train the rest from that cache.
    #[arg(long)]
    cache_frozen: bool,
    /// Augmented views per training image in the cache.
    #[arg(long, default_value_t = 2)]
    cache_views: usize,
    /// Gradual unfreezing: epochs that train only the head first.
    #[arg(long, default_value_t = 1)]
    head_only_epochs: usize,
    /// Gradual unfreezing: blocks unfrozen per epoch after that, from the top (0 = all at once).
    #[arg(long, default_value_t = 0)]
    unfreeze_per_epoch: usize,
    /// Early stopping: epochs without a better validation top-1 (0 = off).
    #[arg(long, default_value_t = 0)]
    patience: usize,
    /// Turn augmentation off (resize only).
    #[arg(long)]
    no_augment: bool,
    /// At most this many training images per epoch (0 = all).
    #[arg(long, default_value_t = 0)]
    limit_train: usize,
    /// Seconds between mid-epoch checkpoints.
    #[arg(long, default_value_t = 300)]
    checkpoint_secs: u64,
    /// Augmented views per image reused across epochs (0 = a fresh one every epoch); distillation
    /// caches the teacher's outputs per view.
    #[arg(long, default_value_t = 0)]
    views: usize,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.recipe.device.device()?;
    let outcome = match &args.resume {
        Some(run_dir) => trainer::resume(run_dir, &device)?,
        None => {
            let (Some(model), Some(data), Some(out)) = (&args.model, &args.data, &args.out) else {
                bail!("--model, --data and --out are required to start a run");
            };
            let recipe = args.recipe.recipe(model, data);
            let pretrained = source::load(model, &device)?;
            trainer::start(out, recipe, pretrained.loaded, pretrained.preprocess, &device)?
        }
    };
    print_outcome(&outcome);
    Ok(())
}

pub fn print_outcome(outcome: &trainer::Outcome) {
    println!(
        "best validation top-1 {:.2}% (epoch {}); {} epochs{}",
        100.0 * outcome.best_top1,
        outcome.best_epoch.map_or(0, |e| e + 1),
        outcome.epochs_run,
        if outcome.stopped_early { ", stopped early" } else { "" }
    );
}

impl RecipeArgs {
    /// The recipe these options describe, for `model` on `data`.
    pub fn recipe(&self, model: &str, data: &std::path::Path) -> Recipe {
        Recipe {
            model: model.to_string(),
            data: data.display().to_string(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            accumulation: self.accumulation,
            lr: self.lr,
            warmup_epochs: self.warmup_epochs,
            weight_decay: self.weight_decay,
            layer_decay: self.layer_decay,
            label_smoothing: self.label_smoothing,
            dropout: self.dropout,
            drop_path: self.drop_path,
            image_size: self.image_size,
            seed: self.seed,
            augment: if self.no_augment { Augment::none() } else { Augment::default() },
            frozen_blocks: self.frozen_blocks,
            cache_frozen: self.cache_frozen,
            cache_views: self.cache_views,
            head_only_epochs: self.head_only_epochs,
            unfreeze_per_epoch: self.unfreeze_per_epoch,
            patience: self.patience,
            checkpoint_secs: self.checkpoint_secs,
            limit_train: self.limit_train,
            views: self.views,
            patch_dropout: self.patch_dropout,
            ..Recipe::default()
        }
    }

    pub fn device(&self) -> DeviceKind {
        self.device
    }
}
