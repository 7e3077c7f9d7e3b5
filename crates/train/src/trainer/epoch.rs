//! One training epoch: its plan (which blocks train, which view, which batches are left), the
//! batches from the frozen-block cache or the image pipeline, and the steps over them.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use vitrine_model::{Heads, Vit};

use super::{Inputs, Run};
use crate::cache::TokenCache;
use crate::checkpoint::{self, RunState};
use crate::data::loader::{Batch, batches, epoch_order, sample_seed};
use crate::distill::{self, Output, Outputs, TeacherOutputs};
use crate::evaluate::{argmax, to_host};
use crate::logbook::StepRecord;
use crate::loss::cross_entropy;
use crate::patch_dropout::drop_patches;
use crate::progress::bar;

/// What an epoch trains on, fixed before its first batch.
pub(super) struct EpochPlan {
    pub index: usize,
    /// Blocks trained, from the top.
    pub trainable: usize,
    /// The augmented view of the training images it sees.
    pub view: usize,
    /// The first batch still to do (a resumed epoch starts mid-way).
    pub first_batch: usize,
    /// The sample indices of each batch still to do.
    pub batches: Vec<Vec<usize>>,
    /// The teacher's outputs on this view, when distilling.
    pub teacher: Option<TeacherTargets>,
}

/// The teacher's outputs a distillation step learns from.
pub(super) struct TeacherTargets {
    logits: TeacherOutputs,
    /// Given when the feature term is on.
    features: Option<TeacherOutputs>,
}

/// The optimizer with its schedule, and when the last checkpoint was written.
pub(super) struct Optimizer {
    pub optimizer: ModuleOptimizer,
    pub scheduler: ModuleLrScheduler,
    pub last_checkpoint: Instant,
}

/// Inputs of one training batch: pixels, or cached hidden states of the frozen blocks.
enum Input {
    Pixels(Tensor<4>),
    Hidden(Tensor<3>),
}

/// One batch to train on.
struct TrainBatch {
    input: Input,
    labels: Vec<usize>,
    /// Positions of the images in the training split.
    indices: Vec<usize>,
}

/// The batches of an epoch, in the plan's order.
enum BatchSource<'a> {
    Cached { cache: &'a TokenCache, batches: std::slice::Iter<'a, Vec<usize>> },
    Pixels(Receiver<Batch>),
}

impl BatchSource<'_> {
    /// The next batch; `None` when the epoch has none left. An empty pixel batch (none of its images
    /// could be read) is an error: skipping it would shift every later batch off its plan.
    fn next(&mut self, device: &Device) -> Result<Option<TrainBatch>> {
        match self {
            BatchSource::Cached { cache, batches } => Ok(batches.next().map(|chunk| TrainBatch {
                input: Input::Hidden(cache.batch(chunk, device)),
                labels: chunk.iter().map(|&i| cache.labels[i]).collect(),
                indices: chunk.clone(),
            })),
            BatchSource::Pixels(receiver) => {
                let Ok(batch) = receiver.recv() else { return Ok(None) };
                if batch.is_empty() {
                    bail!("none of a batch's images could be read, though they could when the run started");
                }
                let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, batch.shape), device);
                Ok(Some(TrainBatch { input: Input::Pixels(pixels), labels: batch.labels, indices: batch.indices }))
            }
        }
    }
}

/// Sums over the forward passes of one optimizer step.
#[derive(Default)]
struct StepTally {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    waiting: Duration,
}

impl Run {
    /// Optimizer steps per epoch and in all.
    pub(super) fn steps(&self) -> crate::schedule::Steps {
        let per_epoch = self.batches_per_epoch().div_ceil(self.recipe.accumulation);
        crate::schedule::Steps { per_epoch, total: per_epoch * self.recipe.epochs }
    }

    pub(super) fn batches_per_epoch(&self) -> usize {
        self.train_len().div_ceil(self.recipe.batch_size)
    }

    /// Epoch `index`'s plan, from batch `first_batch` on.
    pub(super) fn plan_epoch(&self, model: &Vit, index: usize, first_batch: usize, inputs: &Inputs) -> Result<EpochPlan> {
        let recipe = &self.recipe;
        let order: Vec<usize> = epoch_order(self.train.len(), Some((recipe.seed, index))).into_iter().take(self.train_len()).collect();
        // A fresh augmented view per epoch, unless views are reused (a cache holds a fixed number).
        let view = match (&inputs.caches, recipe.reused_views()) {
            (Some((views, _)), _) => index % views.len(),
            (None, 0) => index,
            (None, n) => index % n,
        };
        let teacher = match (&inputs.teacher, &recipe.distill) {
            (Some(teacher), Some(distill)) => {
                let features = if distill.feature_weight > 0.0 {
                    let (mine, theirs) = (model.pre_logits_width(), teacher.model.pre_logits_width());
                    if mine != theirs {
                        bail!("feature distillation needs the student's classifier input ({mine} wide) as wide as the teacher's ({theirs})");
                    }
                    Some(self.teacher_outputs(teacher, Output::Features, view)?)
                } else {
                    None
                };
                Some(TeacherTargets { logits: self.teacher_outputs(teacher, Output::Logits, view)?, features })
            }
            _ => None,
        };
        Ok(EpochPlan {
            index,
            trainable: recipe.trainable_blocks(index, self.spec.config.num_hidden_layers),
            view,
            first_batch,
            batches: order.chunks(recipe.batch_size).skip(first_batch).map(<[usize]>::to_vec).collect(),
            teacher,
        })
    }

    /// Trains the plan's batches, stepping the optimizer every `accumulation` of them; returns the
    /// model and the images it trained on.
    pub(super) fn train_epoch(&self, mut model: Vit, optimizer: &mut Optimizer, state: &mut RunState, plan: &EpochPlan, inputs: &Inputs) -> Result<(Vit, usize)> {
        let recipe = &self.recipe;
        let ad_device = self.device.clone().autodiff();
        let batches_per_epoch = self.batches_per_epoch();
        let mut source = match &inputs.caches {
            Some((views, _)) => BatchSource::Cached { cache: &views[plan.view], batches: plan.batches.iter() },
            None => BatchSource::Pixels(batches(
                self.train.clone(),
                plan.batches.concat(),
                recipe.batch_size,
                inputs.train_transform.clone(),
                recipe.seed,
                plan.view,
                recipe.prefetch,
            )),
        };
        let progress = bar(batches_per_epoch as u64, &format!("epoch {}/{}", plan.index + 1, recipe.epochs));
        progress.set_position(plan.first_batch as u64);
        let started = Instant::now();
        let mut images = 0usize;
        let mut accumulator = GradientsAccumulator::<Vit>::new();
        let (mut tally, mut step_started) = (StepTally::default(), Instant::now());
        for batch_index in plan.first_batch..batches_per_epoch {
            let waiting = Instant::now();
            let batch = match source.next(&ad_device) {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(err) => {
                    progress.abandon();
                    bail!("{err} (epoch {}, batch {batch_index}): restore them, then continue with --resume {}", plan.index + 1, self.dir.0.display());
                }
            };
            tally.waiting += waiting.elapsed();
            let (grads, loss, correct, seen) = self.gradients(&model, batch, plan, batch_index, &ad_device)?;
            if !loss.is_finite() {
                progress.abandon();
                bail!(
                    "the loss became {loss} at epoch {}, batch {batch_index}: training stopped. The last good checkpoint is kept in \
                     {}; lower --lr (now {}) and start again, or resume from it",
                    plan.index + 1,
                    self.dir.checkpoints().display(),
                    recipe.lr
                );
            }
            accumulator.accumulate(&model, grads);
            tally.loss_sum += loss * seen as f64;
            (tally.correct, tally.seen) = (tally.correct + correct, tally.seen + seen);
            images += seen;

            let end_of_step = (batch_index + 1).is_multiple_of(recipe.accumulation) || batch_index + 1 == batches_per_epoch;
            if !end_of_step {
                continue;
            }
            let lr = optimizer.scheduler.step();
            let head_lr = lr.base();
            let (adamw, grads) = (&mut optimizer.optimizer, accumulator.grads());
            model = vitrine_kernels::on_pool(&self.device, || adamw.step(lr, model, grads));
            state.step += 1;
            state.batch_in_epoch = batch_index + 1;
            state.epoch_loss_sum += tally.loss_sum;
            state.epoch_correct += tally.correct;
            state.epoch_seen += tally.seen;
            self.log_step(state, plan, &tally, head_lr, step_started.elapsed().as_secs_f64())?;
            show(&progress, state, head_lr, images as f64 / started.elapsed().as_secs_f64());
            (tally, step_started) = (StepTally::default(), Instant::now());
            if optimizer.last_checkpoint.elapsed().as_secs() >= recipe.checkpoint_secs && state.batch_in_epoch < batches_per_epoch {
                checkpoint::save(&self.dir.0, &model, &optimizer.optimizer, state)?;
                optimizer.last_checkpoint = Instant::now();
            }
        }
        progress.finish_and_clear();
        Ok((model, images))
    }

    /// Forward, loss and backward of one batch: its gradients, the loss, and how many of its
    /// images the model got right of how many.
    fn gradients(&self, model: &Vit, batch: TrainBatch, plan: &EpochPlan, batch_index: usize, device: &Device) -> Result<(GradientsParams, f64, usize, usize)> {
        let recipe = &self.recipe;
        // Dropout and drop-path draw from the device RNG, PatchDropout from its own: both are
        // seeded per batch so a resumed run draws what the uninterrupted one would have.
        let batch_seed = sample_seed(recipe.seed, plan.index, batch_index);
        device.seed(batch_seed);
        let (hidden, first_block) = match batch.input {
            Input::Pixels(pixels) => (model.embed(pixels), 0),
            Input::Hidden(hidden) => (hidden, recipe.frozen_blocks),
        };
        let hidden = drop_patches(hidden, self.spec.config.num_prefix_tokens(), recipe.patch_dropout, batch_seed.wrapping_add(1));
        let features = model.forward_features_from(hidden, first_block);
        let student_features = plan.teacher.as_ref().and_then(|t| t.features.as_ref()).map(|_| model.pre_logits(features.clone()));
        let heads = model.forward_heads(features);
        let logits = heads.clone().combined();
        let Heads { class: class_logits, distilled } = heads;
        let host_logits = to_host(logits.clone())?;
        let loss = match (&recipe.distill, &plan.teacher) {
            (Some(recipe_distill), Some(teacher)) => distill::loss(
                Outputs { logits: class_logits, distilled, features: student_features },
                Outputs {
                    logits: teacher.logits.batch(&batch.indices, device),
                    distilled: None,
                    features: teacher.features.as_ref().map(|f| f.batch(&batch.indices, device)),
                },
                &batch.labels,
                recipe_distill,
                recipe.label_smoothing,
            ),
            _ => cross_entropy(logits, &batch.labels, recipe.label_smoothing),
        };
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        let classes = self.classes.len();
        let correct = host_logits.chunks_exact(classes).zip(&batch.labels).filter(|(row, l)| argmax(row) == **l).count();
        let grads = vitrine_kernels::on_pool(device, || GradientsParams::from_grads((loss / recipe.accumulation as f64).backward(), model));
        Ok((grads, loss_value, correct, batch.labels.len()))
    }

    fn log_step(&self, state: &RunState, plan: &EpochPlan, tally: &StepTally, head_lr: f64, seconds: f64) -> Result<()> {
        self.logbook.step(&StepRecord {
            step: state.step,
            epoch: plan.index,
            loss: tally.loss_sum / tally.seen as f64,
            accuracy: tally.correct as f64 / tally.seen as f64,
            lr: head_lr,
            images_per_s: tally.seen as f64 / seconds,
            data_wait: tally.waiting.as_secs_f64() / seconds,
        })
    }
}

/// The epoch's running loss, accuracy and speed on its progress bar.
fn show(progress: &ProgressBar, state: &RunState, head_lr: f64, images_per_s: f64) {
    progress.set_position(state.batch_in_epoch as u64);
    progress.set_message(format!(
        "loss {:.3}  acc {:.1}%  {:.1} img/s  lr {:.2e}",
        state.epoch_loss_sum / state.epoch_seen as f64,
        100.0 * state.epoch_correct as f64 / state.epoch_seen as f64,
        images_per_s,
        head_lr
    ));
}
