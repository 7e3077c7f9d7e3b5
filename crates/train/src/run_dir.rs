//! The layout of a run folder: the one place that names its files.

use std::path::PathBuf;

use crate::bundle;

/// Files of a run folder.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn recipe(&self) -> PathBuf {
        self.0.join("recipe.json")
    }
    pub fn model_config(&self) -> PathBuf {
        self.0.join("model_config.json")
    }
    pub fn preprocessor(&self) -> PathBuf {
        self.0.join(bundle::PREPROCESSOR)
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    pub fn best(&self) -> PathBuf {
        self.0.join("best")
    }
    /// A cache file (`cache/<name>`): frozen-block outputs (`.f16`), teacher logits (`.f32`).
    pub fn cache(&self, name: &str) -> PathBuf {
        self.0.join("cache").join(name)
    }
}
