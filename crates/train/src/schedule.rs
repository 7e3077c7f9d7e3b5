//! The learning-rate schedule: one cosine over the whole run, a peak per depth (layer-wise decay),
//! and a linear warmup for each parameter group from the step at which it starts training.
//!
//! The per-group warmup is what keeps gradual unfreezing safe: a block that joins mid-run has no
//! Adam moments yet, so at its full rate its first updates are about `lr` per weight in the
//! gradient's sign, which at a head's rate wipes out pretrained features in a few steps.

use anyhow::Result;
use burn::optim::LearningRate;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

use crate::recipe::Recipe;
use crate::setup::{block_group, embeddings_group};

/// Where the run's optimizer steps fall: what every group's rate is a function of.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    pub per_epoch: usize,
    pub total: usize,
}

/// One group's rate at any step: zero before `start`, then warmup, under the run's cosine.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRate {
    pub peak: f64,
    /// The first optimizer step at which the group trains.
    pub start: usize,
    pub warmup: usize,
    pub total: usize,
    /// The cosine's floor as a fraction of the peak.
    pub min_ratio: f64,
}

impl GroupRate {
    fn new(peak: f64, start: usize, recipe: &Recipe, steps: Steps) -> Self {
        // A group that starts late still reaches its peak: its warmup takes at most a third of what is left.
        let warmup = recipe.warmup_steps.min(steps.total.saturating_sub(start) / 3).max(1);
        Self { peak, start, warmup, total: steps.total, min_ratio: recipe.min_lr_ratio }
    }

    /// The rate of optimizer step `step` (counted from 0).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.start {
            return 0.0;
        }
        let warmup = ((step - self.start + 1) as f64 / self.warmup as f64).min(1.0);
        let progress = step as f64 / self.total.max(1) as f64;
        let cosine = self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak * warmup * cosine
    }
}

/// [`GroupRate`] as burn's scheduler: `step` returns the rate of the next optimizer step.
#[derive(Debug, Clone)]
struct Scheduled {
    rate: GroupRate,
    next: usize,
}

impl LrScheduler for Scheduled {
    fn step(&mut self) -> LearningRate {
        self.next += 1;
        self.rate.at(self.next - 1)
    }
    // The step lives in the run's checkpoint state; the scheduler is rebuilt from it.
    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
    }
    fn load_record(&mut self, _record: LrSchedulerRecord) {}
}

/// Every group's rate: the head and final norm at `lr` from step 0; block `i` of `n` at
/// [`Recipe::block_lr`] from the first epoch that trains it; the embeddings below the bottom block.
pub fn group_rates(recipe: &Recipe, num_layers: usize, steps: Steps) -> (GroupRate, Vec<GroupRate>, GroupRate) {
    let start_of = |blocks_from_top: usize| -> usize {
        let epoch = (0..recipe.epochs).find(|&e| recipe.trainable_blocks(e, num_layers) >= blocks_from_top);
        epoch.map_or(steps.total, |e| e * steps.per_epoch)
    };
    let head = GroupRate::new(recipe.lr, 0, recipe, steps);
    let blocks = (0..num_layers)
        .map(|i| GroupRate::new(recipe.block_lr(i, num_layers), start_of(num_layers - i), recipe, steps))
        .collect();
    // The embeddings train only when every block does (and none is frozen for good).
    let embeddings_start = if recipe.frozen_blocks == 0 { start_of(num_layers) } else { steps.total };
    let embeddings = GroupRate::new(recipe.block_lr(0, num_layers) * recipe.layer_decay, embeddings_start, recipe, steps);
    (head, blocks, embeddings)
}

/// burn's scheduler for the run, positioned at optimizer step `step` (a resumed run continues there).
pub fn lr_scheduler(recipe: &Recipe, num_layers: usize, steps: Steps, step: usize) -> Result<ModuleLrScheduler> {
    let (head, blocks, embeddings) = group_rates(recipe, num_layers, steps);
    let scheduled = |rate: GroupRate| Scheduled { rate, next: step };
    let mut scheduler = ModuleLrScheduler::new(scheduled(head)).with_group(embeddings_group()?, scheduled(embeddings));
    for (i, rate) in blocks.into_iter().enumerate() {
        scheduler = scheduler.with_group(block_group(i)?, scheduled(rate));
    }
    Ok(scheduler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_warms_up_from_the_step_it_joins_then_follows_the_cosine() {
        let recipe = Recipe { warmup_steps: 4, min_lr_ratio: 0.0, ..Recipe::default() };
        let rate = GroupRate::new(1.0, 10, &recipe, Steps { per_epoch: 10, total: 100 });
        assert_eq!(rate.at(9), 0.0);
        assert!((rate.at(10) - 0.25 * rate.at(13)).abs() < 0.01 * rate.at(13));
        let cosine = |s: f64| 0.5 * (1.0 + (std::f64::consts::PI * s / 100.0).cos());
        assert!((rate.at(13) - cosine(13.0)).abs() < 1e-12);
        assert!((rate.at(60) - cosine(60.0)).abs() < 1e-12);
        // Joining with 6 steps left, it warms up over 2 of them, not 4.
        assert_eq!(GroupRate::new(1.0, 94, &recipe, Steps { per_epoch: 10, total: 100 }).warmup, 2);
    }

    #[test]
    fn gradual_unfreezing_starts_each_block_at_its_epoch() {
        let recipe = Recipe { epochs: 4, head_only_epochs: 1, unfreeze_per_epoch: 1, backbone_lr: Some(0.1), layer_decay: 0.5, ..Recipe::default() };
        let (head, blocks, embeddings) = group_rates(&recipe, 2, Steps { per_epoch: 5, total: 20 });
        assert_eq!((head.start, head.peak), (0, recipe.lr));
        assert_eq!((blocks[1].start, blocks[1].peak), (5, 0.1));
        assert_eq!((blocks[0].start, blocks[0].peak), (10, 0.05));
        assert_eq!((embeddings.start, embeddings.peak), (10, 0.025));
    }
}
