//! The fine-tuning loop: gradual unfreezing, layer-wise learning rates, gradient accumulation,
//! validation every epoch, early stopping, the best model kept as a bundle, and checkpoints from
//! which `resume` continues exactly (same batches, same augmentation, same dropout draws).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use vitrine_model::{HfVitConfig, Loaded, PreprocessConfig, Vit};

use crate::bundle;
use crate::cache::TokenCache;
use crate::checkpoint::{self, RunState};
use crate::data::loader::{Transform, batches, drop_unreadable, epoch_order, sample_seed};
use crate::data::{ImageFolder, Sample};
use crate::evaluate::{Columns, Evaluation, Tally, argmax, evaluate, probabilities, to_host};
use crate::logbook::{EpochRecord, Logbook, StepRecord};
pub use crate::progress::bar;
use crate::distill::{Output, Outputs, Teacher, TeacherOutputs};
use crate::patch_dropout::drop_patches;
use crate::loss::cross_entropy;
use crate::recipe::Recipe;
use crate::run_dir::RunDir;
use crate::schedule::{self, Steps};
use crate::setup::{self, ModelSpec};

/// A validation loss this many times the previous epoch's stops the run ([`Run::diverged`]).
const DIVERGENCE: f64 = 3.0;

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
pub fn start(run_dir: &Path, recipe: Recipe, pretrained: Loaded, preprocess: PreprocessConfig, device: &Device) -> Result<Outcome> {
    let dir = RunDir(run_dir.to_path_buf());
    if dir.recipe().exists() {
        bail!("{} already holds a run; continue it with --resume {}", run_dir.display(), run_dir.display());
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create the output folder {}", run_dir.display()))?;
    checkpoint::write_atomic(&run_dir.join(".write-test"), b"ok")
        .with_context(|| format!("the output folder {} is not writable", run_dir.display()))?;
    let _ = std::fs::remove_file(run_dir.join(".write-test"));

    recipe.validate(pretrained.config.num_hidden_layers, pretrained.config.patch_size)?;
    let data = open_data(&recipe)?;
    // The new head's initialisation draws from the device RNG: seed it for reproducible runs.
    let ad_device = device.clone().autodiff();
    ad_device.seed(recipe.seed);
    let (model, spec) = setup::with_head(pretrained, &data.classes, &recipe, &ad_device)?;
    let preprocess = preprocess.at_size(recipe.image_size);
    checkpoint::write_atomic(&dir.recipe(), serde_json::to_string_pretty(&recipe)?.as_bytes())?;
    checkpoint::write_atomic(&dir.model_config(), bundle::config_json(&spec.hf_config)?.as_bytes())?;
    checkpoint::write_atomic(&dir.preprocessor(), preprocess.to_json(spec.model_type).to_string().as_bytes())?;
    let run = Run::new(dir, recipe, spec, preprocess, data, device);
    let optimizer = setup::optimizer(&run.recipe)?;
    let state = RunState { best_top1: -1.0, ..RunState::default() };
    checkpoint::save(&run.dir.0, &model, &optimizer, &state)?;
    run.go(model, optimizer, state)
}

/// Continues the run in `run_dir` from its latest checkpoint, with the recipe `adjust` gives back
/// (e.g. lower learning rates after a divergence); a changed recipe is saved for the record.
pub fn resume(run_dir: &Path, adjust: impl FnOnce(Recipe) -> Result<Recipe>, device: &Device) -> Result<Outcome> {
    let dir = RunDir(run_dir.to_path_buf());
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("{} is not a run folder (no {})", run_dir.display(), p.display()));
    let saved: Recipe = serde_json::from_str(&read(dir.recipe())?).with_context(|| format!("{} is not valid", dir.recipe().display()))?;
    let recipe = adjust(saved.clone())?;
    let hf_config = HfVitConfig::from_json(&read(dir.model_config())?)?;
    let preprocess = PreprocessConfig::from_json(&read(dir.preprocessor())?)?;
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
    let mut data = ImageFolder::open(Path::new(&recipe.data), recipe.seed)?;
    for (name, split) in [("train", &mut data.train), ("val", &mut data.val)] {
        let (kept, bad) = drop_unreadable(std::mem::take(split));
        if !bad.is_empty() {
            eprintln!("warning: skipping {} unreadable images in {name}:", bad.len());
            for (sample, error) in bad.iter().take(5) {
                eprintln!("  {}: {error}", sample.path.display());
            }
        }
        *split = kept;
    }
    if data.train.is_empty() || data.val.is_empty() {
        bail!("{} has no readable training or validation images", recipe.data);
    }
    Ok(data)
}

/// Inputs of one training batch: pixels, or cached hidden states of the frozen blocks.
enum Input {
    Pixels(Tensor<4>),
    Hidden(Tensor<3>),
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

    fn go(&self, mut model: Vit, mut optimizer: ModuleOptimizer, mut state: RunState) -> Result<Outcome> {
        let recipe = &self.recipe;
        let num_layers = self.spec.config.num_hidden_layers;
        let ad_device = self.device.clone().autodiff();
        let batches_per_epoch = self.train_len().div_ceil(recipe.batch_size);
        let steps_per_epoch = batches_per_epoch.div_ceil(recipe.accumulation);
        let steps = Steps { per_epoch: steps_per_epoch, total: steps_per_epoch * recipe.epochs };
        let mut scheduler = schedule::lr_scheduler(recipe, num_layers, steps, state.step)?;
        let caches = if recipe.cache_frozen { Some(self.caches(&model)?) } else { None };
        let teacher = match &recipe.distill {
            Some(distill) => Some(self.teacher(&distill.teacher)?),
            None => None,
        };
        let eval_transform = Arc::new(Transform::Eval(self.preprocess.clone()));
        let train_transform = Arc::new(Transform::train(recipe.augment, recipe.image_size, &self.preprocess));
        let mut last_checkpoint = Instant::now();
        let mut stopped_early = false;

        while state.epoch < recipe.epochs {
            let epoch = state.epoch;
            let trainable = recipe.trainable_blocks(epoch, num_layers);
            model = setup::set_trainable(model, trainable)?;
            let order: Vec<usize> =
                epoch_order(self.train.len(), Some((recipe.seed, epoch))).into_iter().take(self.train_len()).collect();
            let skip = state.batch_in_epoch;
            // Which augmented view this epoch sees (a fresh one per epoch unless views are reused).
            let view = match (&caches, recipe.views) {
                (Some((views, _)), _) => epoch % views.len(),
                (None, 0) => epoch,
                (None, n) => epoch % n,
            };
            let teacher_logits = match &teacher {
                Some(teacher) => Some(self.teacher_outputs(teacher, Output::Logits, view)?),
                None => None,
            };
            let teacher_features = match (&teacher, &recipe.distill) {
                (Some(teacher), Some(distill)) if distill.feature_weight > 0.0 => {
                    let (mine, theirs) = (model.pre_logits_width(), teacher.model.pre_logits_width());
                    if mine != theirs {
                        bail!("feature distillation needs the student's classifier input ({mine} wide) as wide as the teacher's ({theirs})");
                    }
                    Some(self.teacher_outputs(teacher, Output::Features, view)?)
                }
                _ => None,
            };
            let progress = bar(batches_per_epoch as u64, &format!("epoch {}/{}", epoch + 1, recipe.epochs));
            progress.set_position(skip as u64);
            let started = Instant::now();
            let mut images_this_session = 0usize;

            // The epoch's batches, from the cache or from the image pipeline.
            let remaining: Vec<Vec<usize>> = order.chunks(recipe.batch_size).skip(skip).map(<[usize]>::to_vec).collect();
            let mut pixel_batches = match &caches {
                Some(_) => None,
                None => Some(batches(
                    self.train.clone(),
                    remaining.concat(),
                    recipe.batch_size,
                    train_transform.clone(),
                    recipe.seed,
                    view,
                    recipe.prefetch,
                )),
            };
            let mut accumulator = GradientsAccumulator::<Vit>::new();
            let (mut step_loss, mut step_correct, mut step_seen, mut step_wait) = (0.0, 0usize, 0usize, Duration::ZERO);
            let mut step_started = Instant::now();
            for (offset, chunk) in remaining.iter().enumerate() {
                let batch_index = skip + offset;
                let waiting = Instant::now();
                let (input, labels, indices) = match (&caches, &mut pixel_batches) {
                    (Some((views, _)), _) => {
                        let cache = &views[view];
                        let labels = chunk.iter().map(|&i| cache.labels[i]).collect::<Vec<_>>();
                        (Input::Hidden(cache.batch(chunk, &ad_device)), labels, chunk.clone())
                    }
                    (None, Some(receiver)) => {
                        let Ok(batch) = receiver.recv() else { break };
                        if batch.is_empty() {
                            progress.abandon();
                            bail!(
                                "none of the images of epoch {}, batch {batch_index} could be read, though they could when the \
                                 run started: restore them, then continue with --resume {}",
                                epoch + 1,
                                self.dir.0.display()
                            );
                        }
                        let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, batch.shape), &ad_device);
                        (Input::Pixels(pixels), batch.labels, batch.indices)
                    }
                    (None, None) => unreachable!(),
                };
                step_wait += waiting.elapsed();
                // Dropout and drop-path draw from the device RNG, PatchDropout from its own: both
                // are seeded per batch so a resumed run draws what the uninterrupted one would have.
                let batch_seed = sample_seed(recipe.seed, epoch, batch_index);
                ad_device.seed(batch_seed);
                let (hidden, first_block) = match input {
                    Input::Pixels(pixels) => (model.embed(pixels), 0),
                    Input::Hidden(hidden) => (hidden, recipe.frozen_blocks),
                };
                let hidden = drop_patches(hidden, self.spec.config.num_prefix_tokens(), recipe.patch_dropout, batch_seed.wrapping_add(1));
                let features = model.features_from_layer(hidden, first_block);
                let student_features = teacher_features.as_ref().map(|_| model.pre_logits(features.clone()));
                let (class_logits, distilled) = model.forward_heads(features);
                let logits = match &distilled {
                    Some(distilled) => (class_logits.clone() + distilled.clone()) / 2.0,
                    None => class_logits.clone(),
                };
                let host_logits = to_host(logits.clone())?;
                let loss = match (&recipe.distill, &teacher_logits) {
                    (Some(distill), Some(teacher)) => crate::distill::loss(
                        Outputs { logits: class_logits, distilled, features: student_features },
                        Outputs {
                            logits: teacher.batch(&indices, &ad_device),
                            distilled: None,
                            features: teacher_features.as_ref().map(|f| f.batch(&indices, &ad_device)),
                        },
                        &labels,
                        distill,
                        recipe.label_smoothing,
                    ),
                    _ => cross_entropy(logits, &labels, recipe.label_smoothing),
                };
                let loss_value = f64::from(loss.clone().into_scalar::<f32>());
                if !loss_value.is_finite() {
                    progress.abandon();
                    bail!(
                        "the loss became {loss_value} at epoch {}, batch {batch_index}: training stopped. The last good checkpoint \
                         is kept in {}; lower --lr (now {}) and start again, or resume from it",
                        epoch + 1,
                        self.dir.checkpoints().display(),
                        recipe.lr
                    );
                }
                let classes = self.classes.len();
                let correct = host_logits.chunks_exact(classes).zip(&labels).filter(|(row, l)| argmax(row) == **l).count();
                let grads = GradientsParams::from_grads((loss / recipe.accumulation as f64).backward(), &model);
                accumulator.accumulate(&model, grads);
                step_loss += loss_value * labels.len() as f64;
                (step_correct, step_seen) = (step_correct + correct, step_seen + labels.len());
                images_this_session += labels.len();

                let end_of_step = (batch_index + 1).is_multiple_of(recipe.accumulation) || batch_index + 1 == batches_per_epoch;
                if !end_of_step {
                    continue;
                }
                let lr = scheduler.step();
                let head_lr = lr.base();
                model = optimizer.step(lr, model, accumulator.grads());
                state.step += 1;
                state.batch_in_epoch = batch_index + 1;
                state.epoch_loss_sum += step_loss;
                state.epoch_correct += step_correct;
                state.epoch_seen += step_seen;
                let seconds = step_started.elapsed().as_secs_f64();
                let record = StepRecord {
                    step: state.step,
                    epoch,
                    loss: step_loss / step_seen as f64,
                    accuracy: step_correct as f64 / step_seen as f64,
                    lr: head_lr,
                    images_per_s: step_seen as f64 / seconds,
                    data_wait: step_wait.as_secs_f64() / seconds,
                };
                self.logbook.step(&record)?;
                progress.set_position(state.batch_in_epoch as u64);
                progress.set_message(format!(
                    "loss {:.3}  acc {:.1}%  {:.1} img/s  lr {:.2e}",
                    state.epoch_loss_sum / state.epoch_seen as f64,
                    100.0 * state.epoch_correct as f64 / state.epoch_seen as f64,
                    images_this_session as f64 / started.elapsed().as_secs_f64(),
                    head_lr
                ));
                (step_loss, step_correct, step_seen, step_wait) = (0.0, 0, 0, Duration::ZERO);
                step_started = Instant::now();
                if last_checkpoint.elapsed().as_secs() >= recipe.checkpoint_secs && state.batch_in_epoch < batches_per_epoch {
                    checkpoint::save(&self.dir.0, &model, &optimizer, &state)?;
                    last_checkpoint = Instant::now();
                }
            }
            progress.finish_and_clear();
            let seconds = started.elapsed().as_secs_f64();

            // Validation, the best bundle, early stopping, then the end-of-epoch checkpoint.
            let val = self.validate(&model, caches.as_ref().map(|(_, val)| val), &eval_transform)?;
            let record = EpochRecord {
                epoch,
                step: state.step,
                train_loss: state.epoch_loss_sum / state.epoch_seen.max(1) as f64,
                train_accuracy: state.epoch_correct as f64 / state.epoch_seen.max(1) as f64,
                trainable_blocks: trainable,
                seconds,
                images_per_s: images_this_session as f64 / seconds,
                val,
            };
            println!(
                "epoch {:>3}/{}  train loss {:.4} acc {:.2}%  |  val loss {:.4} top-1 {:.2}% top-5 {:.2}%  |  {} blocks  {:.0} s  {:.1} img/s",
                epoch + 1,
                recipe.epochs,
                record.train_loss,
                100.0 * record.train_accuracy,
                record.val.loss,
                100.0 * record.val.top1,
                100.0 * record.val.top5,
                trainable,
                seconds,
                record.images_per_s
            );
            self.logbook.epoch(&record)?;
            if let Some(previous) = state.last_val_loss
                && record.val.loss > DIVERGENCE * previous
            {
                return Err(self.diverged(previous, &record));
            }
            state.last_val_loss = Some(record.val.loss);
            if record.val.top1 > state.best_top1 {
                state.best_top1 = record.val.top1;
                state.best_epoch = Some(epoch);
                state.epochs_since_best = 0;
                bundle::replace(&self.dir.best(), &model.valid(), &self.spec.hf_config, self.spec.model_type, &self.preprocess)?;
            } else {
                state.epochs_since_best += 1;
            }
            state.epoch += 1;
            state.batch_in_epoch = 0;
            (state.epoch_loss_sum, state.epoch_correct, state.epoch_seen) = (0.0, 0, 0);
            if recipe.patience > 0 && state.epochs_since_best >= recipe.patience && state.epoch < recipe.epochs {
                println!("early stop: no better validation top-1 for {} epochs", recipe.patience);
                stopped_early = true;
                state.finished = true;
            }
            if state.epoch == recipe.epochs {
                state.finished = true;
            }
            checkpoint::save(&self.dir.0, &model, &optimizer, &state)?;
            last_checkpoint = Instant::now();
            if state.finished {
                break;
            }
        }
        crate::report::write(&self.dir.0).context("writing the report")?;
        Ok(Outcome { best_top1: state.best_top1, best_epoch: state.best_epoch, epochs_run: state.epoch, stopped_early })
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
        let (lr, backbone) = (recipe.lr, recipe.block_lr(num_layers - 1, num_layers));
        match rewound {
            Ok(_) => anyhow::anyhow!(
                "validation loss rose from {previous:.3} to {:.3} in epoch {}{cause} (more than {DIVERGENCE}x): the pretrained \
                 features were likely damaged, so the run stopped. Its checkpoint is back at the end of epoch {} (the best model \
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

    /// The teacher bundle, checked against the dataset's classes, with the transform that shows it
    /// the student's training views at its own resolution.
    fn teacher(&self, dir: &str) -> Result<Teacher> {
        let bundle::Bundle { loaded, preprocess, .. } = bundle::read(Path::new(dir), &self.device).context("reading the teacher")?;
        crate::data::check_labels("the teacher", &loaded.labels, &self.classes)?;
        let side = loaded.config.image_size as u32;
        let size = preprocess.output_size([side, side])[0];
        let transform = Arc::new(Transform::train(self.recipe.augment, size, &preprocess));
        Ok(Teacher { model: loaded.model, size, transform })
    }

    /// The teacher's logits or features for training view `view`: saved beside the run, else from
    /// the teacher run's cached frozen blocks (`teacher_run`), else from the teacher on the images.
    fn teacher_outputs(&self, teacher: &Teacher, output: Output, view: usize) -> Result<TeacherOutputs> {
        let path = self.dir.cache(&output.file_name(teacher.size, view));
        if let Some(saved) = TeacherOutputs::load(&path, self.train.len(), output.width(&teacher.model)) {
            return Ok(saved);
        }
        let distill = self.recipe.distill.as_ref().expect("a teacher comes with a distillation recipe");
        let outputs = match &distill.teacher_run {
            Some(run) => {
                let (tokens, layers) = self.teacher_tokens(Path::new(run), teacher.size, view)?;
                TeacherOutputs::from_tokens(&teacher.model, output, &tokens, layers, &self.device)?
            }
            None => TeacherOutputs::compute(teacher, output, self.train.clone(), self.recipe.seed, view, &self.device)?,
        };
        outputs.save(&path)?;
        Ok(outputs)
    }

    /// The teacher run's cached frozen blocks for view `view`, refused unless that run saw exactly
    /// the images this view shows: same dataset, seed and augmentation, at the teacher's resolution.
    fn teacher_tokens(&self, run: &Path, size: u32, view: usize) -> Result<(TokenCache, usize)> {
        let json = std::fs::read_to_string(RunDir(run.to_path_buf()).recipe()).with_context(|| format!("--teacher-run {}: no recipe.json", run.display()))?;
        let theirs: Recipe = serde_json::from_str(&json)?;
        let mine = &self.recipe;
        let same_data = std::fs::canonicalize(&theirs.data).ok() == std::fs::canonicalize(&mine.data).ok();
        if !theirs.cache_frozen || view >= theirs.cache_views {
            bail!("--teacher-run {} cached no training view {view} (cache_views {})", run.display(), theirs.cache_views);
        }
        if !same_data || theirs.seed != mine.seed || theirs.augment != mine.augment || theirs.image_size != size || theirs.limit_train != 0 {
            bail!(
                "--teacher-run {} trained on other views (data, seed, augmentation or {size} px differ): its cache cannot stand in for the teacher",
                run.display()
            );
        }
        let path = RunDir(run.to_path_buf()).cache(&format!("train-{size}px-view{view}.f16"));
        let tokens = TokenCache::load(&path)?.with_context(|| format!("{} is missing", path.display()))?;
        let labels: Vec<usize> = self.train.iter().map(|s| s.label).collect();
        if tokens.labels != labels {
            bail!("{} holds other images than this run's training split", path.display());
        }
        Ok((tokens, theirs.frozen_blocks))
    }

    /// The frozen blocks' outputs: one cache per augmented view of the training set, one of val.
    fn caches(&self, model: &Vit) -> Result<(Vec<TokenCache>, TokenCache)> {
        let frozen = model.valid();
        let device = self.device.clone();
        let layers = self.recipe.frozen_blocks;
        let size = self.recipe.image_size;
        let build = |name: String, samples: Arc<Vec<Sample>>, transform: Transform, view: usize| -> Result<TokenCache> {
            let path = self.dir.cache(&name);
            if let Some(cache) = TokenCache::load(&path)?
                && cache.len() == samples.len()
            {
                return Ok(cache);
            }
            let progress = bar(samples.len() as u64, &format!("caching blocks 1-{layers} ({name})"));
            let cache = TokenCache::build(&frozen, layers, samples, Arc::new(transform), self.recipe.seed, view, 32, &device, &progress)?;
            progress.finish_and_clear();
            std::fs::create_dir_all(path.parent().unwrap())?;
            cache.save(&path)?;
            Ok(cache)
        };
        let train_subset: Arc<Vec<Sample>> = Arc::new(self.train.to_vec());
        let mut views = Vec::new();
        for view in 0..self.recipe.cache_views {
            let transform = Transform::train(self.recipe.augment, size, &self.preprocess);
            views.push(build(format!("train-{size}px-view{view}.f16"), train_subset.clone(), transform, view)?);
        }
        let val = build(format!("val-{size}px.f16"), self.val.clone(), Transform::Eval(self.preprocess.clone()), 0)?;
        Ok((views, val))
    }

    fn validate(&self, model: &Vit, val_cache: Option<&TokenCache>, transform: &Arc<Transform>) -> Result<Evaluation> {
        let model = model.valid();
        let progress = bar(self.val.len() as u64, "validating");
        let evaluation = match val_cache {
            None => evaluate(&model, self.val.clone(), transform.clone(), Columns::All(self.classes.len()), 64, &self.device, &progress)?,
            Some(cache) => {
                let mut tally = Tally::new(self.classes.len());
                let order: Vec<usize> = (0..cache.len()).collect();
                for chunk in order.chunks(64) {
                    let logits = model.forward_from_layer(cache.batch(chunk, &self.device), self.recipe.frozen_blocks);
                    let labels: Vec<usize> = chunk.iter().map(|&i| cache.labels[i]).collect();
                    tally.add(&probabilities(logits)?, &labels, chunk);
                    progress.inc(chunk.len() as u64);
                }
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
