//! The fine-tuning loop: gradual unfreezing, layer-wise learning rates, gradient accumulation,
//! validation every epoch, early stopping, the best model kept as a bundle, and checkpoints from
//! which `resume` continues exactly (same batches, same augmentation, same dropout draws).
//!
//! `mod.rs` starts, resumes and ends epochs; `epoch.rs` trains one; `frozen.rs` caches the frozen
//! blocks; `teacher.rs` gives a distillation run its teacher's outputs.

mod epoch;
mod frozen;
mod teacher;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use vitrine_model::{HfVitConfig, Loaded, PreprocessConfig, Vit};

use crate::bundle;
use crate::cache::TokenCache;
use crate::checkpoint::{self, RunState};
use crate::data::loader::Transform;
use crate::data::{ImageFolder, Sample};
use crate::distill::Teacher;
use crate::evaluate::{Columns, Evaluation, Tally, evaluate, probabilities};
use crate::logbook::{EpochRecord, Logbook};
pub use crate::progress::bar;
use crate::recipe::Recipe;
use crate::run_dir::RunDir;
use crate::schedule;
use crate::setup::{self, ModelSpec};
use epoch::{EpochPlan, Optimizer};

/// A validation loss this many times the previous epoch's stops the run ([`Run::diverged`]), when it
/// is also worse than a uniform guess's ([`is_divergence`]).
const DIVERGENCE: f64 = 3.0;

/// Whether a validation loss of `now` after `previous` means the run lost what it knew: more than
/// [`DIVERGENCE`] times the epoch before, and above `ln(classes)`, the loss of a uniform guess. The
/// second half spares a transient swing from a small loss (0.17 to 0.67 on 100 photos of two
/// classes, 83 % right, seen on a tiny dataset with the default rates), which later epochs recover.
fn is_divergence(previous: f64, now: f64, classes: usize) -> bool {
    now > DIVERGENCE * previous && now > (classes as f64).ln()
}

/// What every epoch reads: the frozen blocks' caches, the teacher, the transforms.
struct Inputs {
    /// One cache per augmented view of the training set, and one of val.
    caches: Option<(Vec<TokenCache>, TokenCache)>,
    teacher: Option<Teacher>,
    eval_transform: Arc<Transform>,
    train_transform: Arc<Transform>,
}

/// Everything a run needs besides its mutable state.
struct Run {
    dir: RunDir,
    recipe: Recipe,
    spec: ModelSpec,
    /// The model's own preprocessing at the run's image size: evaluation and export.
    preprocess: PreprocessConfig,
    classes: Vec<String>,
    train: Arc<Vec<Sample>>,
    val: Arc<Vec<Sample>>,
    device: Device,
    logbook: Logbook,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
    pub epochs_run: usize,
    pub stopped_early: bool,
}

/// Starts a new run in `run_dir` from a pretrained model.
///
/// A run folder is one with a `recipe.json`, and that file is written last, after the first
/// checkpoint: a start killed midway leaves no run, and starting again overwrites what it left.
/// A start that fails removes the folder it created.
pub fn start(run_dir: &Path, recipe: Recipe, pretrained: Loaded, preprocess: PreprocessConfig, device: &Device) -> Result<Outcome> {
    let dir = RunDir(run_dir.to_path_buf());
    if dir.recipe().exists() {
        bail!("{} already holds a run; continue it with --resume {}", run_dir.display(), run_dir.display());
    }
    refuse_inside(run_dir, Path::new(&recipe.data))?;
    recipe.validate(pretrained.config.num_hidden_layers, pretrained.config.patch_size)?;
    let data = open_data(&recipe)?;
    // The new head's initialisation draws from the device RNG: seed it for reproducible runs.
    let ad_device = device.clone().autodiff();
    ad_device.seed(recipe.seed);
    let (model, spec) = setup::with_head(pretrained, &data.classes, &recipe, &ad_device)?;
    let preprocess = preprocess.at_size(recipe.image_size);
    let optimizer = setup::optimizer(&recipe)?;
    let state = RunState { best_top1: -1.0, ..RunState::default() };
    let created = !run_dir.exists();
    let first_files = || -> Result<()> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create the output folder {}", run_dir.display()))?;
        checkpoint::write_atomic(&dir.model_config(), bundle::config_json(&spec.hf_config)?.as_bytes())
            .with_context(|| format!("the output folder {} is not writable", run_dir.display()))?;
        checkpoint::write_atomic(&dir.preprocessor(), preprocess.to_json(spec.model_type).to_string().as_bytes())?;
        checkpoint::save(run_dir, &model, &optimizer, &state)?;
        checkpoint::write_atomic(&dir.recipe(), serde_json::to_string_pretty(&recipe)?.as_bytes())
    };
    if let Err(err) = first_files() {
        if created {
            let _ = std::fs::remove_dir_all(run_dir);
        }
        return Err(err);
    }
    let run = Run::new(dir, recipe, spec, preprocess, data, device);
    run.go(model, optimizer, state)
}

/// Refuses a run folder that is the dataset or inside it: its checkpoints and bundles would
/// become class folders and images of the next run, and the dataset a run folder.
fn refuse_inside(run_dir: &Path, data: &Path) -> Result<()> {
    let (Ok(data), Some(out)) = (data.canonicalize(), resolved(run_dir)) else { return Ok(()) };
    if out.starts_with(&data) {
        bail!("the output folder {} is inside the dataset {}: choose one outside it", run_dir.display(), data.display());
    }
    Ok(())
}

/// `path` made absolute with its links resolved, for a path that may not exist yet: its nearest
/// existing ancestor resolved, the rest appended.
fn resolved(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?);
        existing = existing.parent()?;
    }
    let mut out = existing.canonicalize().ok()?;
    out.extend(rest.into_iter().rev());
    Some(out)
}

/// Whether the run in `run_dir` has ended (its epochs done, or stopped early).
pub fn finished(run_dir: &Path) -> Result<bool> {
    match checkpoint::latest(run_dir)? {
        Some(latest) => Ok(checkpoint::state(&latest)?.finished),
        None => Ok(false),
    }
}

/// Continues the run in `run_dir` from its latest checkpoint, with the recipe `adjust` gives back
/// (e.g. lower learning rates after a divergence); a changed recipe is saved for the record.
pub fn resume(run_dir: &Path, adjust: impl FnOnce(Recipe) -> Result<Recipe>, device: &Device) -> Result<Outcome> {
    let dir = RunDir(run_dir.to_path_buf());
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("{} is not a run folder (no {})", run_dir.display(), p.display()));
    let invalid = |p: PathBuf| format!("{} is not valid", p.display());
    let saved = Recipe::from_json(&read(dir.recipe())?).with_context(|| invalid(dir.recipe()))?;
    let recipe = adjust(saved.clone())?;
    let hf_config = HfVitConfig::from_json(&read(dir.model_config())?).with_context(|| invalid(dir.model_config()))?;
    let preprocess = PreprocessConfig::from_json(&read(dir.preprocessor())?).with_context(|| invalid(dir.preprocessor()))?;
    let model_type = hf_config.model_type()?;
    let config = vitrine_model::VitConfig {
        drop_path_rate: recipe.drop_path,
        classifier_dropout: recipe.dropout,
        ..hf_config.to_vit_config(vitrine_model::config::Head::Linear)?
    };
    let data = open_data(&recipe)?;
    if hf_config.labels()? != data.classes {
        bail!("the dataset's classes changed since the run started: {:?} vs {:?}", data.classes, hf_config.labels()?);
    }
    let Some(latest) = checkpoint::latest(run_dir)? else { bail!("{} has no checkpoint to resume from", run_dir.display()) };
    let model = config.init(&device.clone().autodiff());
    let (model, optimizer, mut state) = checkpoint::load(&latest, model, setup::optimizer(&recipe)?)?;
    if state.finished && (recipe == saved || state.epoch >= recipe.epochs) {
        bail!("the run in {} has already finished (give more --epochs to extend it)", run_dir.display());
    }
    state.finished = false;
    eprintln!("resuming from {} (epoch {}, step {})", latest.display(), state.epoch + 1, state.step);
    if recipe != saved {
        recipe.validate(config.num_hidden_layers, config.patch_size)?;
        checkpoint::write_atomic(&dir.recipe(), serde_json::to_string_pretty(&recipe)?.as_bytes())?;
    }
    let spec = ModelSpec { config, hf_config, model_type };
    let run = Run::new(dir, recipe, spec, preprocess, data, device);
    run.logbook.rewind(state.step, state.epoch)?;
    run.go(model, optimizer, state)
}

fn open_data(recipe: &Recipe) -> Result<ImageFolder> {
    let data = ImageFolder::open(Path::new(&recipe.data), recipe.seed)?;
    if data.train.is_empty() || data.val.is_empty() {
        bail!("{} has no readable training or validation images", recipe.data);
    }
    Ok(data)
}

impl Run {
    fn new(dir: RunDir, recipe: Recipe, spec: ModelSpec, preprocess: PreprocessConfig, data: ImageFolder, device: &Device) -> Self {
        let logbook = Logbook::new(&dir.0);
        Self {
            dir,
            recipe,
            spec,
            preprocess,
            classes: data.classes,
            train: Arc::new(data.train),
            val: Arc::new(data.val),
            device: device.clone(),
            logbook,
        }
    }

    fn train_len(&self) -> usize {
        match self.recipe.limit_train {
            0 => self.train.len(),
            n => n.min(self.train.len()),
        }
    }

    fn go(&self, mut model: Vit, optimizer: ModuleOptimizer, mut state: RunState) -> Result<Outcome> {
        let recipe = &self.recipe;
        let scheduler = schedule::lr_scheduler(recipe, self.spec.config.num_hidden_layers, self.steps(), state.step)?;
        let mut optimizer = Optimizer { optimizer, scheduler, last_checkpoint: Instant::now() };
        let inputs = Inputs {
            caches: if recipe.cache_frozen { Some(self.caches(&model)?) } else { None },
            teacher: match &recipe.distill {
                Some(distill) => Some(self.teacher(&distill.teacher)?),
                None => None,
            },
            eval_transform: Arc::new(Transform::Eval(self.preprocess.clone())),
            train_transform: Arc::new(Transform::train(recipe.augment, recipe.image_size, &self.preprocess)),
        };
        let mut stopped_early = false;
        while state.epoch < recipe.epochs {
            let plan = self.plan_epoch(&model, state.epoch, state.batch_in_epoch, &inputs)?;
            model = setup::set_trainable(model, plan.trainable)?;
            let started = Instant::now();
            let images;
            (model, images) = self.train_epoch(model, &mut optimizer, &mut state, &plan, &inputs)?;
            let record = self.epoch_record(&model, &state, &plan, &inputs, started.elapsed().as_secs_f64(), images)?;
            stopped_early = self.end_epoch(&model, &mut optimizer, &mut state, &record)?;
            if state.finished {
                break;
            }
        }
        crate::report::write(&self.dir.0).context("writing the report")?;
        Ok(Outcome { best_top1: state.best_top1, best_epoch: state.best_epoch, epochs_run: state.epoch, stopped_early })
    }

    /// Validates the epoch's model and prints the epoch's line.
    fn epoch_record(&self, model: &Vit, state: &RunState, plan: &EpochPlan, inputs: &Inputs, seconds: f64, images: usize) -> Result<EpochRecord> {
        let val = self.validate(model, inputs.caches.as_ref().map(|(_, val)| val), &inputs.eval_transform)?;
        let record = EpochRecord {
            epoch: plan.index,
            step: state.step,
            train_loss: state.epoch_loss_sum / state.epoch_seen.max(1) as f64,
            train_accuracy: state.epoch_correct as f64 / state.epoch_seen.max(1) as f64,
            trainable_blocks: plan.trainable,
            seconds,
            images_per_s: images as f64 / seconds,
            val,
        };
        println!(
            "epoch {:>3}/{}  train loss {:.4} acc {:.2}%  |  val loss {:.4} top-1 {:.2}% top-5 {:.2}%  |  {} blocks  {:.0} s  {:.1} img/s",
            plan.index + 1,
            self.recipe.epochs,
            record.train_loss,
            100.0 * record.train_accuracy,
            record.val.loss,
            100.0 * record.val.top1,
            100.0 * record.val.top5,
            record.trainable_blocks,
            seconds,
            record.images_per_s
        );
        Ok(record)
    }

    /// After validation: the logbook, the divergence guard, the best bundle, early stopping and the
    /// end-of-epoch checkpoint. Returns whether the run stopped early.
    fn end_epoch(&self, model: &Vit, optimizer: &mut Optimizer, state: &mut RunState, record: &EpochRecord) -> Result<bool> {
        let recipe = &self.recipe;
        self.logbook.epoch(record)?;
        if let Some(previous) = state.last_val_loss
            && is_divergence(previous, record.val.loss, self.classes.len())
        {
            return Err(self.diverged(previous, record));
        }
        state.last_val_loss = Some(record.val.loss);
        if record.val.top1 > state.best_top1 {
            state.best_top1 = record.val.top1;
            state.best_epoch = Some(record.epoch);
            state.epochs_since_best = 0;
            bundle::replace(&self.dir.best(), &model.valid(), &self.spec.hf_config, self.spec.model_type, &self.preprocess)?;
        } else {
            state.epochs_since_best += 1;
        }
        state.epoch += 1;
        state.batch_in_epoch = 0;
        (state.epoch_loss_sum, state.epoch_correct, state.epoch_seen) = (0.0, 0, 0);
        let mut stopped_early = false;
        if recipe.patience > 0 && state.epochs_since_best >= recipe.patience && state.epoch < recipe.epochs {
            println!("early stop: no better validation top-1 for {} epochs", recipe.patience);
            stopped_early = true;
            state.finished = true;
        }
        if state.epoch == recipe.epochs {
            state.finished = true;
        }
        checkpoint::save(&self.dir.0, model, &optimizer.optimizer, state)?;
        optimizer.last_checkpoint = Instant::now();
        Ok(stopped_early)
    }

    /// Stops a run whose validation loss jumped: the checkpoint goes back to the end of the epoch
    /// before, and the error says how to continue from there with lower rates.
    fn diverged(&self, previous: f64, record: &EpochRecord) -> anyhow::Error {
        let recipe = &self.recipe;
        let num_layers = self.spec.config.num_hidden_layers;
        let unfrozen = record.epoch > 0 && record.trainable_blocks > recipe.trainable_blocks(record.epoch - 1, num_layers);
        let rewound = checkpoint::rewind_to_epoch_end(&self.dir.0);
        let _ = crate::report::write(&self.dir.0);
        let cause = if unfrozen { format!(", the epoch that began training {} blocks", record.trainable_blocks) } else { String::new() };
        let (lr, backbone) = (recipe.lr, recipe.top_block_lr());
        match rewound {
            Ok(_) => anyhow::anyhow!(
                "validation loss rose from {previous:.3} to {:.3} in epoch {}{cause} (more than {DIVERGENCE}x, and worse than a uniform \
                 guess): the pretrained features were likely damaged, so the run stopped. Its checkpoint is back at the end of epoch {} (the best model \
                 so far stays in {}). Continue from there with lower rates:\n  vitrine train --resume {} --lr {:.1e} --backbone-lr {:.1e}",
                record.val.loss,
                record.epoch + 1,
                record.epoch,
                self.dir.best().display(),
                self.dir.0.display(),
                lr / 3.0,
                backbone / 3.0,
            ),
            Err(err) => err.context(format!("validation loss rose from {previous:.3} to {:.3}: the run stopped", record.val.loss)),
        }
    }

    fn validate(&self, model: &Vit, val_cache: Option<&TokenCache>, transform: &Arc<Transform>) -> Result<Evaluation> {
        let model = model.valid();
        let progress = bar(self.val.len() as u64, "validating");
        let evaluation = match val_cache {
            None => evaluate(&model, self.val.clone(), transform.clone(), Columns::All(self.classes.len()), 64, &self.device, &progress)?,
            Some(cache) => {
                let mut tally = Tally::new(self.classes.len());
                cache.for_each_batch(64, &self.device, &progress, |hidden, labels, indices| {
                    let logits = model.forward_head(model.forward_features_from(hidden, self.recipe.frozen_blocks));
                    tally.add(&probabilities(logits)?, labels, indices);
                    Ok(())
                })?;
                tally.finish()
            }
        };
        progress.finish_and_clear();
        let mut evaluation = evaluation;
        for miss in &mut evaluation.worst {
            miss.path = Some(self.val[miss.index].path.display().to_string());
        }
        Ok(evaluation)
    }
}

#[cfg(test)]
mod tests {
    use super::is_divergence;

    #[test]
    fn only_a_jump_past_a_uniform_guess_counts_as_divergence() {
        assert!(is_divergence(0.5, 4.5, 10), "the destroyed run: loss far above ln 10 = 2.3");
        assert!(!is_divergence(0.173, 0.669, 2), "a swing under ln 2 = 0.693 recovers");
        assert!(!is_divergence(1.0, 2.5, 10), "under 3x");
        assert!(is_divergence(0.2, 0.7, 2));
    }
}
