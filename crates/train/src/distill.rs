//! Knowledge distillation (Hinton et al. 2015; DeiT, Touvron et al. 2020): the student learns from
//! the teacher's outputs as well as the labels. Soft: KL divergence between the softened
//! distributions (temperature `T`, scaled by `T^2`) mixed with cross-entropy. Hard (DeiT): cross-
//! entropy on the teacher's top-1. A student with a distillation token learns the teacher's signal
//! on its distillation head and the labels on its class head.
//!
//! Feature distillation adds a term that pulls the student's classifier input (CLS, or CLS and
//! the mean patch token) towards the teacher's: many numbers per image instead of a few logits.
//!
//! Teacher outputs are computed once per image and augmented view and kept beside the run, so the
//! teacher's cost is paid once, not every epoch. The teacher sees each view at its own resolution
//! (the same crop, flip and jitter as the student's view), so a student can train at a lower one.
//! When the teacher was trained on cached frozen blocks, its run's cache gives the logits of the
//! matching view for the cost of the top blocks alone ([`DistillRecipe::teacher_run`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vitrine_model::Vit;
use vitrine_model::weights::le;

use crate::cache::TokenCache;
use crate::checkpoint::write_atomic;
use crate::data::Sample;
use crate::data::loader::{Transform, epoch_order, for_each_batch};
use crate::evaluate::to_host;
use crate::progress::bar;
use crate::loss::{cross_entropy, cross_entropy_to};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillRecipe {
    /// The teacher bundle (a classifier with the dataset's classes).
    pub teacher: String,
    /// Softening temperature of the soft loss.
    pub temperature: f64,
    /// Weight of the teacher's term; `1 - alpha` goes to the labels.
    pub alpha: f64,
    /// DeiT's hard distillation: the teacher's top-1 as a label.
    pub hard: bool,
    /// The teacher's training run (`vitrine train --cache-frozen`): its cached frozen-block outputs
    /// stand in for the teacher's bottom blocks on the views it cached (same data, seed and augmentation).
    #[serde(default)]
    pub teacher_run: Option<String>,
    /// Weight of the feature term: the mean squared difference between the student's classifier
    /// input and the teacher's (0 = off; the two must have the same width).
    #[serde(default)]
    pub feature_weight: f64,
}

/// The teacher, with the transform that shows it the student's views at its own resolution.
pub struct Teacher {
    pub model: Vit,
    /// A digest of the teacher's bundle files: its saved outputs are reused only for the same one.
    pub fingerprint: String,
    /// Input side in pixels.
    pub size: u32,
    pub transform: Arc<Transform>,
}

/// What the student gives and the teacher gave for one batch.
pub struct Outputs {
    /// The class head's logits, `[batch, classes]`.
    pub logits: Tensor<2>,
    /// The distillation head's logits (a student with a distillation token; the student only).
    pub distilled: Option<Tensor<2>>,
    /// The classifier's input, `[batch, width]`: given when the feature term is on.
    pub features: Option<Tensor<2>>,
}

/// The distillation loss of one batch: `(1 - alpha)` x cross-entropy with the labels, `alpha` x the
/// teacher's term (KL at temperature T, or cross-entropy with the teacher's top-1 when `hard`), and
/// `feature_weight` x the mean squared difference of the classifier inputs.
pub fn loss(student: Outputs, teacher: Outputs, labels: &[usize], recipe: &DistillRecipe, smoothing: f64) -> Tensor<1> {
    let kd_input = student.distilled.unwrap_or_else(|| student.logits.clone());
    let label_term = cross_entropy(student.logits, labels, smoothing);
    let teacher_term = if recipe.hard {
        cross_entropy_to(kd_input, teacher.logits.argmax(1), 0.0)
    } else {
        kl_divergence(kd_input, teacher.logits, recipe.temperature)
    };
    let loss = label_term * (1.0 - recipe.alpha) + teacher_term * recipe.alpha;
    match (student.features, teacher.features) {
        (Some(mine), Some(theirs)) if recipe.feature_weight > 0.0 => loss + (mine - theirs).square().mean() * recipe.feature_weight,
        _ => loss,
    }
}

/// `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.
pub fn kl_divergence(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [batch, _] = student.dims();
    let log_p_student = log_softmax(student / temperature, 1);
    let log_p_teacher = log_softmax(teacher.clone() / temperature, 1);
    let p_teacher = softmax(teacher / temperature, 1);
    (p_teacher * (log_p_teacher - log_p_student)).sum() * (temperature * temperature / batch as f64)
}

/// Which of the teacher's outputs a [`TeacherOutputs`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Logits,
    /// The classifier's input ([`Vit::pre_logits`]).
    Features,
}

impl Output {
    /// Values per image.
    pub fn width(self, teacher: &Vit) -> usize {
        match self {
            Output::Logits => teacher.num_labels(),
            Output::Features => teacher.pre_logits_width(),
        }
    }

    /// The cache file's name for the teacher at `size` px and training view `view`.
    pub fn file_name(self, size: u32, view: usize) -> String {
        match self {
            Output::Logits => format!("teacher-{size}px-view{view}.f32"),
            Output::Features => format!("teacher-features-{size}px-view{view}.f32"),
        }
    }

    fn of(self, teacher: &Vit, last_hidden_state: Tensor<3>) -> Tensor<2> {
        match self {
            Output::Logits => teacher.forward_head(last_hidden_state),
            Output::Features => teacher.pre_logits(last_hidden_state),
        }
    }
}

/// Where the key of the outputs saved at `path` lives.
fn key_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("key")
}

/// A hex SHA-256 digest of `parts`, each length-prefixed so that no two lists collide.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The teacher's logits or features for every training image of one augmented view, `[samples, width]`.
pub struct TeacherOutputs {
    pub width: usize,
    values: Vec<f32>,
}

impl TeacherOutputs {
    /// Outputs saved by [`TeacherOutputs::save`] under `key` for `samples` images, `width` values
    /// each, if `path` holds them. Outputs saved under another key (another teacher, view, seed,
    /// augmentation or image list) are not these, whatever their length.
    pub fn load(path: &Path, samples: usize, width: usize, key: &str) -> Option<Self> {
        if std::fs::read_to_string(key_path(path)).ok()? != key {
            return None;
        }
        let bytes = std::fs::read(path).ok()?;
        if bytes.len() != samples * width * 4 {
            return None;
        }
        let values = le::f32s(&bytes);
        Some(Self { width, values })
    }

    /// Saves the outputs, then `key` beside them (last, so a torn save is never taken for whole).
    pub fn save(&self, path: &Path, key: &str) -> Result<()> {
        std::fs::create_dir_all(path.parent().expect("a cache file has a folder"))?;
        let _ = std::fs::remove_file(key_path(path));
        write_atomic(path, &le::bytes(&self.values))?;
        write_atomic(&key_path(path), key.as_bytes())
    }

    /// Runs the teacher on every sample, as view `view` of `teacher.transform` (seeded like the student's).
    pub fn compute(teacher: &Teacher, output: Output, samples: Arc<Vec<Sample>>, seed: u64, view: usize, device: &Device) -> Result<Self> {
        let width = output.width(&teacher.model);
        let progress = bar(samples.len() as u64, &format!("teacher {output:?}, view {view}").to_lowercase());
        let mut values = vec![f32::NAN; samples.len() * width];
        let order = epoch_order(samples.len(), None);
        for_each_batch(samples.clone(), order, 32, teacher.transform.clone(), (seed, view), device, &progress, |pixels, _, indices| {
            let rows = to_host(output.of(&teacher.model, teacher.model.forward_features(pixels)))?;
            for (&i, row) in indices.iter().zip(rows.chunks_exact(width)) {
                values[i * width..(i + 1) * width].copy_from_slice(row);
            }
            Ok(())
        })?;
        progress.finish_and_clear();
        if values.iter().any(|v| v.is_nan()) {
            bail!("the teacher could not see every training image");
        }
        Ok(Self { width, values })
    }

    /// The teacher's outputs from its own cached outputs of blocks `0..layers` (only its top blocks run).
    pub fn from_tokens(teacher: &Vit, output: Output, tokens: &TokenCache, layers: usize, device: &Device) -> Result<Self> {
        let width = output.width(teacher);
        let progress = bar(tokens.len() as u64, &format!("teacher {output:?} from its cached blocks 1-{layers}").to_lowercase());
        let mut values = Vec::with_capacity(tokens.len() * width);
        tokens.for_each_batch(32, device, &progress, |hidden, _, _| {
            values.extend(to_host(output.of(teacher, teacher.forward_features_from(hidden, layers)))?);
            Ok(())
        })?;
        progress.finish_and_clear();
        Ok(Self { width, values })
    }

    /// `[indices.len(), width]` outputs of these samples.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let rows: Vec<f32> = indices.iter().flat_map(|&i| self.values[i * self.width..(i + 1) * self.width].iter().copied()).collect();
        Tensor::from_data(TensorData::new(rows, [indices.len(), self.width]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_outputs_of_another_teacher_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/teacher-32px-view0.f32");
        let outputs = TeacherOutputs { width: 2, values: vec![1.0, 2.0, 3.0, 4.0] };
        let (mine, retrained) = (digest([b"teacher".as_slice()]), digest([b"teacher, retrained".as_slice()]));
        outputs.save(&path, &mine).unwrap();
        assert_eq!(TeacherOutputs::load(&path, 2, 2, &mine).unwrap().values, outputs.values);
        assert!(TeacherOutputs::load(&path, 2, 2, &retrained).is_none(), "same length, other teacher: must not be reused");
        std::fs::remove_file(key_path(&path)).unwrap();
        assert!(TeacherOutputs::load(&path, 2, 2, &mine).is_none(), "outputs without a key are not trusted");
    }

    #[test]
    fn kl_is_zero_for_equal_logits_and_positive_otherwise() {
        let device = Device::flex();
        let a = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0], [2, 3]), &device);
        let b = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0, 1.5, 1.0, 0.0, -3.0], [2, 3]), &device);
        let same = kl_divergence(a.clone(), a.clone(), 4.0).into_scalar::<f32>();
        let other = kl_divergence(a, b, 4.0).into_scalar::<f32>();
        assert!(same.abs() < 1e-6, "{same}");
        assert!(other > 0.01, "{other}");
    }

    #[test]
    fn hard_distillation_is_cross_entropy_with_the_teachers_top1() {
        let device = Device::flex();
        let student = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0], [2, 3]), &device);
        let teacher = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.2, 1.5, 4.0, 0.0, -3.0], [2, 3]), &device);
        let recipe = DistillRecipe { teacher: String::new(), temperature: 1.0, alpha: 1.0, hard: true, teacher_run: None, feature_weight: 0.0 };
        let outputs = |logits| Outputs { logits, distilled: None, features: None };
        let hard = loss(outputs(student.clone()), outputs(teacher), &[0, 0], &recipe, 0.1).into_scalar::<f32>();
        let expected = cross_entropy(student, &[2, 0], 0.0).into_scalar::<f32>();
        assert!((hard - expected).abs() < 1e-6, "{hard} vs {expected}");
    }
}
