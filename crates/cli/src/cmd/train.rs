//! `vitrine train`: fine-tune a pretrained ViT on an ImageFolder dataset (or `--resume` a run).

use std::path::PathBuf;

use anyhow::{Result, bail};
use vitrine_train::data::augment::Augment;
use vitrine_train::recipe::{CACHED_VIEWS, Recipe};
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
    /// Continue the run in this folder from its last checkpoint; its recipe.json fixes every option
    /// except the learning rates, the epochs, patience and checkpoint interval.
    #[arg(long, conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.recipe.device.device()?;
    let outcome = match &args.resume {
        Some(run_dir) => trainer::resume(run_dir, |saved| args.recipe.resumed(saved), &device)?,
        None => {
            let (Some(model), Some(data), Some(out)) = (&args.model, &args.data, &args.out) else {
                bail!("--model, --data and --out are required to start a run");
            };
            let recipe = args.recipe.recipe(Recipe::default(), model, data);
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

/// The training options shared by `train`, `distill` and `compress`. Each one left out keeps the
/// command's default recipe ([`Recipe::default`] for `train`, [`Recipe::distillation`] otherwise),
/// so the defaults have one home; the help shows `train`'s.
#[derive(clap::Args)]
pub struct RecipeArgs {
    #[arg(long, help = shown("Epochs in all", defaults().epochs))]
    epochs: Option<usize>,
    #[arg(long, help = shown("Images per forward pass", defaults().batch_size))]
    batch_size: Option<usize>,
    #[arg(long, help = shown("Forward passes per optimizer step (gradient accumulation)", defaults().accumulation))]
    accumulation: Option<usize>,
    #[arg(long, help = shown("Peak learning rate of the head", defaults().lr))]
    lr: Option<f64>,
    #[arg(long, help = shown("Peak learning rate of the top block (lower blocks decay from it)", defaults().top_block_lr()))]
    backbone_lr: Option<f64>,
    #[arg(long, help = shown("Layer-wise learning-rate decay per block from the top (1 = off)", defaults().layer_decay))]
    layer_decay: Option<f64>,
    #[arg(long, help = shown("AdamW weight decay (none on biases, norms, LayerScale, tokens)", defaults().weight_decay))]
    weight_decay: Option<f64>,
    #[arg(long, help = shown("Linear warmup of each parameter group, in optimizer steps from when it starts training", defaults().warmup_steps))]
    warmup_steps: Option<usize>,
    #[arg(long, help = shown("Label smoothing", defaults().label_smoothing))]
    label_smoothing: Option<f64>,
    #[arg(long, help = shown("Dropout on the classifier input", defaults().dropout))]
    dropout: Option<f64>,
    #[arg(long, help = shown("Stochastic depth at the last block", defaults().drop_path))]
    drop_path: Option<f64>,
    #[arg(long, help = shown("PatchDropout: fraction of each training image's patch tokens dropped at the input of the first trained block (evaluation keeps every token)", defaults().patch_dropout))]
    patch_dropout: Option<f64>,
    #[arg(long, help = shown("Square input side in pixels (a multiple of the patch size)", defaults().image_size))]
    image_size: Option<u32>,
    #[arg(long, help = shown("Seed of the split, the head, the batches and the augmentation", defaults().seed))]
    seed: Option<u64>,
    #[arg(long, help = shown("Bottom blocks never trained (with the embeddings)", defaults().frozen_blocks))]
    frozen_blocks: Option<usize>,
    /// Compute the frozen blocks once per image and view, and train the rest from that cache.
    #[arg(long)]
    cache_frozen: bool,
    #[arg(long, help = shown("Gradual unfreezing: epochs that train only the head first", defaults().head_only_epochs))]
    head_only_epochs: Option<usize>,
    #[arg(long, help = shown("Gradual unfreezing: blocks unfrozen per epoch after that, from the top (0 = all at once)", defaults().unfreeze_per_epoch))]
    unfreeze_per_epoch: Option<usize>,
    #[arg(long, help = shown("Early stopping: epochs without a better validation top-1 (0 = off)", defaults().patience))]
    patience: Option<usize>,
    /// Turn augmentation off (resize only).
    #[arg(long)]
    no_augment: bool,
    #[arg(long, help = shown("At most this many training images per epoch (0 = all)", defaults().limit_train))]
    limit_train: Option<usize>,
    #[arg(long, help = shown("Seconds between mid-epoch checkpoints", defaults().checkpoint_secs))]
    checkpoint_secs: Option<u64>,
    #[arg(long, alias = "cache-views", help = shown(&format!("Augmented views per image reused across epochs (0 = a fresh one every epoch, or {CACHED_VIEWS} with --cache-frozen); the frozen-block cache and the teacher's outputs are kept per view"), defaults().views))]
    views: Option<usize>,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

fn defaults() -> Recipe {
    Recipe::default()
}

/// A help line with the default it falls back to.
fn shown(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// Options that a resumed run may change: the rates, its length and when it stops or saves.
const CHANGEABLE_ON_RESUME: [&str; 5] = ["--lr", "--backbone-lr", "--epochs", "--patience", "--checkpoint-secs"];

impl RecipeArgs {
    /// `base` with every option given here applied, for `model` on `data`.
    pub fn recipe(&self, base: Recipe, model: &str, data: &std::path::Path) -> Recipe {
        let mut recipe = Recipe { model: model.to_string(), data: data.display().to_string(), ..base };
        self.apply(&mut recipe);
        recipe
    }

    /// A resumed run's recipe: the saved one, with the options that may change applied; any
    /// other option is refused rather than ignored.
    pub fn resumed(&self, saved: Recipe) -> Result<Recipe> {
        let fixed: Vec<String> = self.given().into_iter().filter(|flag| !CHANGEABLE_ON_RESUME.contains(&flag.as_str())).collect();
        if !fixed.is_empty() {
            bail!("{} cannot change when a run resumes (its recipe.json fixes it); only {} can", fixed.join(", "), CHANGEABLE_ON_RESUME.join(", "));
        }
        let mut recipe = saved;
        self.apply(&mut recipe);
        Ok(recipe)
    }

    pub fn device(&self) -> DeviceKind {
        self.device
    }
}

/// `apply` and `given` over the optional fields, so the list of options is written once.
macro_rules! optional_fields {
    ($($field:ident),*) => {
        impl RecipeArgs {
            fn apply(&self, recipe: &mut Recipe) {
                $(if let Some(value) = self.$field { recipe.$field = value; })*
                if let Some(lr) = self.backbone_lr {
                    recipe.backbone_lr = Some(lr);
                }
                recipe.cache_frozen |= self.cache_frozen;
                if self.no_augment {
                    recipe.augment = Augment::none();
                }
            }

            /// The options given on the command line (`device` aside, which is not in the recipe).
            fn given(&self) -> Vec<String> {
                let set = [$((stringify!($field), self.$field.is_some()),)*
                    ("backbone_lr", self.backbone_lr.is_some()), ("cache_frozen", self.cache_frozen), ("no_augment", self.no_augment)];
                set.into_iter().filter(|(_, on)| *on).map(|(field, _)| format!("--{}", field.replace('_', "-"))).collect()
            }
        }
    };
}

optional_fields!(
    epochs, batch_size, accumulation, lr, layer_decay, weight_decay, warmup_steps, label_smoothing, dropout, drop_path,
    patch_dropout, image_size, seed, frozen_blocks, head_only_epochs, unfreeze_per_epoch, patience,
    limit_train, checkpoint_secs, views
);
