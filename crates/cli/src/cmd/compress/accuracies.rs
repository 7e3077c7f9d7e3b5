//! The report's validation accuracies, kept between runs of `vitrine compress`: evaluating is
//! deterministic (timing is not), and the teacher alone takes minutes, so a rebuilt report only
//! evaluates the bundles whose files changed since.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Result;
use vitrine_train::bundle::{CONFIG, PREPROCESSOR, WEIGHTS};
use vitrine_train::data::Sample;

/// Top-1 accuracies by what they were measured on, in `FILE` of the pipeline folder.
pub struct Accuracies {
    file: PathBuf,
    known: BTreeMap<String, f64>,
}

pub const FILE: &str = "accuracies.json";

impl Accuracies {
    /// The accuracies kept in `dir`; none when the file is missing or unreadable (it is only a cache).
    pub fn open(dir: &Path) -> Self {
        let file = dir.join(FILE);
        let known = std::fs::read(&file).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        Self { file, known }
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.known.get(key).copied()
    }

    pub fn insert(&mut self, key: String, top1: f64) -> Result<()> {
        self.known.insert(key, top1);
        Ok(std::fs::write(&self.file, serde_json::to_string_pretty(&self.known)?)?)
    }
}

/// What an accuracy depends on: the bundle's files (path, length and modification time of each),
/// the token merging setting and the validation images. `None` when the bundle is not a local folder.
pub fn key(bundle: &Path, tome: usize, val: &[Sample]) -> Option<String> {
    let mut files = Vec::new();
    for name in [CONFIG, WEIGHTS, PREPROCESSOR] {
        let path = bundle.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            // The preprocessor file is optional; the other two make a bundle.
            if name == PREPROCESSOR {
                continue;
            }
            return None;
        };
        let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        files.push(format!("{}:{}:{modified}", std::fs::canonicalize(&path).ok()?.display(), meta.len()));
    }
    let mut images = DefaultHasher::new();
    for sample in val {
        (&sample.path, sample.label).hash(&mut images);
    }
    Some(format!("{} tome={tome} val={}:{:016x}", files.join(" "), val.len(), images.finish()))
}
