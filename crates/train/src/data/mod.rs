//! ImageFolder datasets: `root/{train,val,test}/<class>/<image>`, or `root/<class>/<image>` split by
//! a seeded, stratified draw. Classes are the sorted folder names, the same for every split.

pub mod augment;
pub mod image_file;
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
    /// Every image is decoded once first, and only the readable ones are split and kept: the
    /// others are named in one warning, as is a class that ends up with no image in a split.
    pub fn open(root: &Path, split_seed: u64) -> Result<Self> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        let train_dir = root.join("train");
        let mut skipped = Skipped::default();
        let mut readable = |dir: &Path, classes: &[String], what: &str| -> Result<Vec<Sample>> {
            let (samples, skipped_here) = read_split(dir, classes)?;
            skipped.add(skipped_here);
            let (kept, bad) = loader::drop_unreadable(samples);
            loader::warn_unreadable(&bad, what);
            Ok(kept)
        };
        let (classes, train, val, test) = if train_dir.is_dir() {
            let classes = class_names(&train_dir)?;
            let mut read = |name: &str, required: bool| -> Result<Vec<Sample>> {
                let dir = root.join(name);
                if !dir.is_dir() {
                    if required {
                        bail!("{} has train/ but no {name}/", root.display());
                    }
                    return Ok(Vec::new());
                }
                readable(&dir, &classes, &format!("{name}/"))
            };
            let (train, val, test) = (read("train", true)?, read("val", true)?, read("test", false)?);
            (classes, train, val, test)
        } else {
            let classes = class_names(root)?;
            let samples = readable(root, &classes, &root.display().to_string())?;
            let (train, val, test) = stratified_split(samples, classes.len(), split_seed);
            (classes, train, val, test)
        };
        skipped.warn(root);
        let folder = Self { root: root.to_path_buf(), classes, train, val, test };
        folder.warn_empty_classes();
        Ok(folder)
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

    /// One warning per split in which some class has no readable image.
    fn warn_empty_classes(&self) {
        for (name, split) in [("train", &self.train), ("val", &self.val), ("test", &self.test)] {
            if name == "test" && split.is_empty() {
                continue; // no test split at all is fine
            }
            let empty: Vec<&str> = (0..self.classes.len())
                .filter(|&label| !split.iter().any(|s| s.label == label))
                .map(|label| self.classes[label].as_str())
                .collect();
            if !empty.is_empty() {
                eprintln!("warning: {} has no readable {name} image of class(es) {empty:?}", self.root.display());
            }
        }
    }
}

/// What a class folder held besides images: files of other types, and folders (not searched).
#[derive(Debug, Default, Clone, Copy)]
struct Skipped {
    files: usize,
    folders: usize,
}

impl Skipped {
    fn add(&mut self, other: Skipped) {
        self.files += other.files;
        self.folders += other.folders;
    }

    fn warn(&self, root: &Path) {
        if self.files > 0 {
            eprintln!("warning: skipped {} files that are not images in {}", self.files, root.display());
        }
        if self.folders > 0 {
            eprintln!("warning: skipped {} folders inside class folders of {} (images are read from <class>/ itself, not below it)", self.folders, root.display());
        }
    }
}

/// Sorted names of the sub-folders of `dir`: at least two, each a class.
fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        // `metadata` follows a symbolic link: a class folder linked from elsewhere is a class.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
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

/// The image files of one split, in sorted path order, and what else the class folders held.
fn read_split(dir: &Path, classes: &[String]) -> Result<(Vec<Sample>, Skipped)> {
    let mut samples = Vec::new();
    let mut skipped = Skipped::default();
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
            if path.is_dir() {
                skipped.folders += 1;
            } else if is_image {
                paths.push(path); // a pipe or device named .jpg is refused, with why, when it is read
            } else {
                skipped.files += 1;
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

    fn write_images(dir: &Path, n: usize) {
        std::fs::create_dir_all(dir).unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(8, 8, image::Rgb([i as u8, 9, 9])).save(dir.join(format!("{i}.png"))).unwrap();
        }
    }

    #[test]
    #[cfg(unix)]
    fn a_class_folder_linked_from_elsewhere_is_a_class() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, elsewhere) = (tmp.path().join("data"), tmp.path().join("elsewhere/cats"));
        write_images(&data.join("dogs"), 10);
        write_images(&data.join("birds"), 10);
        write_images(&elsewhere, 10);
        std::os::unix::fs::symlink(&elsewhere, data.join("cats")).unwrap();
        let folder = ImageFolder::open(&data, 0).unwrap();
        assert_eq!(folder.classes, ["birds", "cats", "dogs"]);
        let cats = folder.train.iter().chain(&folder.val).chain(&folder.test).filter(|s| s.label == 1).count();
        assert_eq!(cats, 10, "every image of the linked folder");
    }

    #[test]
    fn only_readable_images_are_split() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path();
        write_images(&data.join("full"), 20);
        // 2 good images among 40 empty files: split first, the 2 could both land outside train.
        write_images(&data.join("sparse"), 2);
        for i in 0..40 {
            std::fs::write(data.join("sparse").join(format!("empty{i}.jpg")), b"").unwrap();
        }
        for seed in 0..8 {
            let folder = ImageFolder::open(data, seed).unwrap();
            let sparse: Vec<&Sample> = folder.train.iter().filter(|s| s.label == 1).collect();
            assert_eq!(sparse.len(), 2, "seed {seed}: both readable images train");
            assert!(folder.val.iter().chain(&folder.test).all(|s| s.label == 0), "seed {seed}: no empty file in a split");
            assert_eq!(folder.train.len() + folder.val.len() + folder.test.len(), 22);
        }
    }

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
