//! ImageFolder datasets: `root/{train,val,test}/<class>/<image>`, or `root/<class>/<image>` split by
//! a seeded, stratified draw. Classes are the sorted folder names, the same for every split.

pub mod augment;
pub mod loader;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// File extensions read as images; anything else in a class folder is skipped with a warning.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif"];

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// The splits of one dataset, with shared class names.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    /// Files skipped because their extension is not an image's.
    pub skipped_files: usize,
}

/// Fractions of a single-folder dataset that go to validation and test.
const SPLIT_VAL: f64 = 0.15;
const SPLIT_TEST: f64 = 0.15;

/// Refuses a classifier whose labels (in index order) are not exactly the dataset's `classes`;
/// `whose` names it in the message ("the model", "the teacher").
pub fn check_labels(whose: &str, labels: &[String], classes: &[String]) -> Result<()> {
    if labels != classes {
        bail!("{whose}'s labels {labels:?} do not match the dataset's classes {classes:?}");
    }
    Ok(())
}

pub use vitrine_model::classes::match_labels;

/// The images an evaluation reads, and what they are.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// Which images these are, for the output: "every image of DIR", "the val/ split of DIR", ...
    pub description: String,
}

impl EvalSet {
    /// The images of `root` to evaluate. A folder of `<class>/` folders alone: every image in it,
    /// or with `split` the seeded share that training would use. A folder with split folders
    /// (`train/`, `val/`, `test/`): `split` (default `val`), which may be the only one there.
    pub fn open(root: &Path, split: Option<&str>, split_seed: u64) -> Result<Self> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        let has_splits = ["train", "val", "test"].iter().any(|s| root.join(s).is_dir());
        if has_splits {
            let name = split.unwrap_or("val");
            if !["train", "val", "test"].contains(&name) {
                bail!("unknown split {name:?} (train, val or test)");
            }
            let dir = root.join(name);
            if !dir.is_dir() {
                bail!("{} has no {name}/ folder", root.display());
            }
            let classes = class_names(&dir)?;
            let (samples, _) = read_split(&dir, &classes)?;
            return Ok(Self { classes, samples, description: format!("the {name}/ split of {}", root.display()) });
        }
        match split {
            None => {
                let classes = class_names(root)?;
                let (samples, _) = read_split(root, &classes)?;
                Ok(Self { classes, samples, description: format!("every image of {}", root.display()) })
            }
            Some(name) => {
                let folder = ImageFolder::open(root, split_seed)?;
                let samples = folder.split(name)?.to_vec();
                let description = format!("the seeded {name} share (seed {split_seed}) of {}", root.display());
                Ok(Self { classes: folder.classes, samples, description })
            }
        }
    }
}

impl ImageFolder {
    /// Reads `root`. With `train/` present, `val/` is required and `test/` optional; otherwise the
    /// class folders sit directly under `root` and are split 70/15/15 per class with `split_seed`.
    pub fn open(root: &Path, split_seed: u64) -> Result<Self> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        let train_dir = root.join("train");
        let mut skipped_files = 0;
        let (classes, train, val, test) = if train_dir.is_dir() {
            let classes = class_names(&train_dir)?;
            let mut read = |dir: &Path, required: bool| -> Result<Vec<Sample>> {
                if !dir.is_dir() {
                    if required {
                        bail!("{} has train/ but no {}/", root.display(), dir.file_name().unwrap().to_string_lossy());
                    }
                    return Ok(Vec::new());
                }
                let (samples, skipped) = read_split(dir, &classes)?;
                skipped_files += skipped;
                Ok(samples)
            };
            let train = read(&train_dir, true)?;
            let val = read(&root.join("val"), true)?;
            let test = read(&root.join("test"), false)?;
            (classes, train, val, test)
        } else {
            let classes = class_names(root)?;
            let (samples, skipped) = read_split(root, &classes)?;
            skipped_files += skipped;
            let (train, val, test) = stratified_split(samples, classes.len(), split_seed);
            (classes, train, val, test)
        };
        if skipped_files > 0 {
            eprintln!("warning: skipped {skipped_files} non-image files in {}", root.display());
        }
        Ok(Self { root: root.to_path_buf(), classes, train, val, test, skipped_files })
    }

    /// The split named `name` (`train`, `val` or `test`).
    pub fn split(&self, name: &str) -> Result<&[Sample]> {
        match name {
            "train" => Ok(&self.train),
            "val" => Ok(&self.val),
            "test" if !self.test.is_empty() => Ok(&self.test),
            "test" => bail!("{} has no test split", self.root.display()),
            other => bail!("unknown split {other:?} (train, val or test)"),
        }
    }
}

/// Sorted names of the sub-folders of `dir`: at least two, each a class.
fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            classes.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    classes.sort();
    match classes.len() {
        0 => bail!("{} has no class folders (expected <class>/<image> inside)", dir.display()),
        1 => bail!("{} has a single class folder ({:?}); a classifier needs at least two", dir.display(), classes[0]),
        _ => Ok(classes),
    }
}

/// The images of one split, in sorted path order, and how many non-image files were skipped.
fn read_split(dir: &Path, classes: &[String]) -> Result<(Vec<Sample>, usize)> {
    let mut samples = Vec::new();
    let mut skipped = 0;
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            bail!("{} has no folder for class {class:?}", dir.display());
        }
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&class_dir).with_context(|| format!("reading {}", class_dir.display()))? {
            let path = entry?.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if path.is_file() && is_image {
                paths.push(path);
            } else {
                skipped += 1;
            }
        }
        if paths.is_empty() {
            bail!("class folder {} has no images", class_dir.display());
        }
        paths.sort();
        samples.extend(paths.into_iter().map(|path| Sample { path, label }));
    }
    Ok((samples, skipped))
}

/// 70/15/15 per class, shuffled with `seed`; every class keeps at least one training image.
fn stratified_split(samples: Vec<Sample>, classes: usize, seed: u64) -> (Vec<Sample>, Vec<Sample>, Vec<Sample>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for label in 0..classes {
        let mut class: Vec<Sample> = samples.iter().filter(|s| s.label == label).cloned().collect();
        class.shuffle(&mut rng);
        let n = class.len();
        let n_val = ((n as f64 * SPLIT_VAL).round() as usize).min(n.saturating_sub(1));
        let n_test = ((n as f64 * SPLIT_TEST).round() as usize).min(n - 1 - n_val);
        test.extend(class.drain(..n_test));
        val.extend(class.drain(..n_val));
        train.extend(class);
    }
    (train, val, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_seeded() {
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample { path: PathBuf::from(format!("{i}.png")), label: i % 2 })
            .collect();
        let (train, val, test) = stratified_split(samples.clone(), 2, 7);
        assert_eq!((train.len(), val.len(), test.len()), (28, 6, 6));
        assert_eq!(val.iter().filter(|s| s.label == 0).count(), 3);
        assert_eq!(stratified_split(samples.clone(), 2, 7).1, val);
        assert_ne!(stratified_split(samples, 2, 8).1, val);
    }
}
