//! The frozen blocks' outputs, computed once per image and view (`--cache-frozen`), so that an
//! epoch costs only the blocks that train.

use std::sync::Arc;

use anyhow::Result;
use burn::module::Module;
use vitrine_model::Vit;

use super::Run;
use crate::cache::TokenCache;
use crate::data::Sample;
use crate::data::loader::Transform;
use crate::progress::bar;

impl Run {
    /// The frozen blocks' outputs: one cache per augmented view of the training set, one of val.
    pub(super) fn caches(&self, model: &Vit) -> Result<(Vec<TokenCache>, TokenCache)> {
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
        let mut views = Vec::new();
        for view in 0..self.recipe.reused_views() {
            let transform = Transform::train(self.recipe.augment, size, &self.preprocess);
            views.push(build(format!("train-{size}px-view{view}.f16"), self.train.clone(), transform, view)?);
        }
        let val = build(format!("val-{size}px.f16"), self.val.clone(), Transform::Eval(self.preprocess.clone()), 0)?;
        Ok((views, val))
    }
}
