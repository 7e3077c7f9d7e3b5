//! The fine-tuning recipe: every choice of a run, saved as `RUN_DIR/recipe.json` so that a run can
//! be resumed and reported exactly.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Where the pretrained weights came from (a folder or `hf:ORG/NAME`), for the record.
    pub model: String,
    /// The ImageFolder root.
    pub data: String,
    pub epochs: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step (gradient accumulation).
    pub accumulation: usize,
    /// Peak learning rate of the new head (and the final norm).
    pub lr: f64,
    /// Peak learning rate of the top block; each block below gets `layer_decay` times the one
    /// above, the embeddings one step below the bottom block. `None`: `lr * layer_decay`.
    #[serde(default)]
    pub backbone_lr: Option<f64>,
    /// Final learning rate as a fraction of the peak (cosine floor).
    pub min_lr_ratio: f64,
    /// Linear warmup of every parameter group, in optimizer steps from the step it starts
    /// training (at most a third of the steps it has left), so a block unfrozen mid-run ramps up too.
    #[serde(default = "default_warmup_steps")]
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Layer-wise learning-rate decay (1.0 = off).
    pub layer_decay: f64,
    pub label_smoothing: f64,
    /// Dropout on the classifier input.
    pub dropout: f64,
    /// Stochastic depth at the last block.
    pub drop_path: f64,
    /// Square input side in pixels.
    pub image_size: u32,
    pub seed: u64,
    pub augment: Augment,
    /// Bottom blocks that are never trained (with the embeddings).
    pub frozen_blocks: usize,
    /// Compute the frozen blocks' output once per image and view ([`Recipe::reused_views`]) and
    /// train from it.
    pub cache_frozen: bool,
    /// Gradual unfreezing: epochs that train only the head (and final norm) first.
    pub head_only_epochs: usize,
    /// Gradual unfreezing: blocks unfrozen per epoch after that, from the top (0 = all at once).
    pub unfreeze_per_epoch: usize,
    /// Stop after this many epochs without a better validation top-1 (0 = never).
    pub patience: usize,
    /// Save a mid-epoch checkpoint at most this many seconds after the previous one.
    pub checkpoint_secs: u64,
    /// Batches decoded ahead of the model.
    pub prefetch: usize,
    /// Train on at most this many images per epoch (0 = all): quick trials and tests.
    pub limit_train: usize,
    /// Augmented views per image, reused across epochs (epoch `e` sees view `e % views`), so that
    /// frozen blocks and teacher outputs can be cached; 0 = a fresh augmentation every epoch
    /// (under `cache_frozen`, [`CACHED_VIEWS`]).
    #[serde(default)]
    pub views: usize,
    /// PatchDropout: the fraction of patch tokens each training image drops at the input of the
    /// first trained block ([`crate::patch_dropout`]); evaluation keeps them all.
    #[serde(default)]
    pub patch_dropout: f64,
    /// Learn from a teacher as well as the labels.
    #[serde(default)]
    pub distill: Option<crate::distill::DistillRecipe>,
}

/// The fine-tuning defaults, chosen by measurement (docs/training.md, "Safe defaults").
impl Default for Recipe {
    fn default() -> Self {
        Self {
            model: String::new(),
            data: String::new(),
            epochs: 10,
            batch_size: 32,
            accumulation: 1,
            lr: 1e-3,
            backbone_lr: Some(1e-4),
            min_lr_ratio: 0.01,
            warmup_steps: default_warmup_steps(),
            weight_decay: 0.05,
            layer_decay: 0.9,
            label_smoothing: 0.0,
            dropout: 0.0,
            drop_path: 0.0,
            image_size: 224,
            seed: 0,
            augment: Augment::default(),
            frozen_blocks: 0,
            cache_frozen: false,
            head_only_epochs: 0,
            unfreeze_per_epoch: 0,
            patience: 0,
            checkpoint_secs: 300,
            prefetch: 2,
            limit_train: 0,
            views: 0,
            patch_dropout: 0.0,
            distill: None,
        }
    }
}

/// Views the frozen-block cache holds when `views` is left at 0.
pub const CACHED_VIEWS: usize = 2;

fn default_warmup_steps() -> usize {
    20
}

impl Recipe {
    /// The defaults of distillation (`distill`, `compress`): the setting `docs/compression.md`
    /// measured, with every block at the head's decayed rate after one head-only epoch, label
    /// smoothing and stochastic depth 0.1 (a student cut from a fine-tuned teacher has no new head
    /// to protect, and distils over more epochs than a quick fine-tune).
    pub fn distillation() -> Self {
        Self {
            backbone_lr: None,
            layer_decay: 0.75,
            head_only_epochs: 1,
            unfreeze_per_epoch: 0,
            label_smoothing: 0.1,
            drop_path: 0.1,
            ..Self::default()
        }
    }

    /// Reads `recipe.json`. Recipes written before `views` served the frozen-block cache too
    /// kept the cache's count in `cache_views`: it becomes `views` for a run that cached.
    pub fn from_json(json: &str) -> serde_json::Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        if let Some(map) = value.as_object_mut()
            && let Some(cached) = map.remove("cache_views")
            && map.get("cache_frozen") == Some(&serde_json::Value::Bool(true))
        {
            map.insert("views".into(), cached);
        }
        serde_json::from_value(value)
    }

    /// Augmented views per image that the run reuses across epochs (0: a fresh one every epoch).
    pub fn reused_views(&self) -> usize {
        if self.cache_frozen && self.views == 0 { CACHED_VIEWS } else { self.views }
    }

    /// Peak learning rate of the top block.
    pub fn top_block_lr(&self) -> f64 {
        self.backbone_lr.unwrap_or(self.lr * self.layer_decay)
    }

    /// Peak learning rate of block `i` (counted from the bottom) of `num_layers`.
    pub fn block_lr(&self, i: usize, num_layers: usize) -> f64 {
        self.top_block_lr() * self.layer_decay.powi((num_layers - 1 - i) as i32)
    }

    /// Refuses settings that cannot work, before any time is spent.
    pub fn validate(&self, num_layers: usize, patch_size: usize) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.accumulation == 0 {
            bail!("epochs, batch size and accumulation must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            bail!("--lr must be in (0, 1], got {}", self.lr);
        }
        if let Some(lr) = self.backbone_lr
            && !(lr > 0.0 && lr <= 1.0)
        {
            bail!("--backbone-lr must be in (0, 1], got {lr}");
        }
        if !(0.0..=1.0).contains(&self.layer_decay) || self.layer_decay == 0.0 {
            bail!("--layer-decay must be in (0, 1], got {}", self.layer_decay);
        }
        if self.frozen_blocks > num_layers {
            bail!("--frozen-blocks {} exceeds the model's {num_layers} blocks", self.frozen_blocks);
        }
        if self.cache_frozen && self.frozen_blocks == 0 {
            bail!("--cache-frozen needs --frozen-blocks >= 1");
        }
        if let Some(distill) = &self.distill {
            if self.reused_views() == 0 {
                bail!("distillation caches the teacher's outputs per augmented view: give --views N (N >= 1)");
            }
            if !(0.0..=1.0).contains(&distill.alpha) || distill.temperature <= 0.0 {
                bail!("--alpha must be in [0, 1] and --temperature positive");
            }
            if !(distill.feature_weight >= 0.0 && distill.feature_weight.is_finite()) {
                bail!("--feature-weight must be 0 or more, got {}", distill.feature_weight);
            }
        }
        if self.image_size == 0 || !(self.image_size as usize).is_multiple_of(patch_size) {
            bail!("--image-size {} must be a positive multiple of the patch size {patch_size}", self.image_size);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) || !(0.0..1.0).contains(&self.dropout) || !(0.0..1.0).contains(&self.drop_path) {
            bail!("label smoothing, dropout and drop path must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.patch_dropout) {
            bail!("--patch-dropout must be in [0, 1), got {}", self.patch_dropout);
        }
        Ok(())
    }

    /// Blocks trained in `epoch` (counted from the top), under gradual unfreezing.
    pub fn trainable_blocks(&self, epoch: usize, num_layers: usize) -> usize {
        let available = num_layers - self.frozen_blocks;
        if epoch < self.head_only_epochs {
            0
        } else if self.unfreeze_per_epoch == 0 {
            available
        } else {
            ((epoch - self.head_only_epochs + 1) * self.unfreeze_per_epoch).min(available)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_unfreezing_goes_top_down_to_the_frozen_prefix() {
        let recipe = Recipe { head_only_epochs: 1, unfreeze_per_epoch: 2, frozen_blocks: 6, ..Recipe::default() };
        let plan: Vec<usize> = (0..6).map(|e| recipe.trainable_blocks(e, 12)).collect();
        assert_eq!(plan, [0, 2, 4, 6, 6, 6]);
        let all = Recipe { head_only_epochs: 0, unfreeze_per_epoch: 0, ..Recipe::default() };
        assert_eq!(all.trainable_blocks(0, 12), 12);
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = Recipe { image_size: 112, ..Recipe::default() };
        assert!(ok.validate(12, 14).is_ok());
        assert!(Recipe { image_size: 100, ..ok.clone() }.validate(12, 14).is_err());
        assert!(Recipe { lr: 0.0, ..ok.clone() }.validate(12, 14).is_err());
        assert!(Recipe { backbone_lr: Some(f64::NAN), ..ok.clone() }.validate(12, 14).is_err());
        assert!(Recipe { frozen_blocks: 13, ..ok.clone() }.validate(12, 14).is_err());
        assert!(Recipe { patch_dropout: 1.0, ..ok.clone() }.validate(12, 14).is_err());
        assert!(Recipe { cache_frozen: true, ..ok }.validate(12, 14).is_err());
    }

    #[test]
    fn one_count_of_views_serves_the_cache_and_the_reuse() {
        let cached = Recipe { frozen_blocks: 2, cache_frozen: true, ..Recipe::default() };
        assert_eq!((cached.reused_views(), Recipe { views: 3, ..cached.clone() }.reused_views()), (CACHED_VIEWS, 3));
        assert_eq!((Recipe::default().reused_views(), Recipe { views: 4, ..Recipe::default() }.reused_views()), (0, 4));
        // A recipe.json from before: the cache's own count is the run's views.
        let mut old: serde_json::Value = serde_json::to_value(&cached).unwrap();
        old["views"] = 0.into();
        old["cache_views"] = 1.into();
        assert_eq!(Recipe::from_json(&old.to_string()).unwrap().reused_views(), 1);
        old["cache_frozen"] = false.into();
        assert_eq!(Recipe::from_json(&old.to_string()).unwrap().reused_views(), 0, "a run that did not cache reused no views");
    }
}
