//! Knowledge distillation (Hinton et al. 2015; DeiT, Touvron et al. 2020): the student learns from
//! the teacher's outputs as well as the labels. Soft: KL divergence between the softened
//! distributions (temperature `T`, scaled by `T^2`) mixed with cross-entropy. Hard (DeiT): cross-
//! entropy on the teacher's top-1. A student with a distillation token learns the teacher's signal
//! on its distillation head and the labels on its class head.
//!
//! Teacher logits are computed once per image and augmented view and kept beside the run, so the
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
use crate::data::loader::{Transform, batches, epoch_order};
use crate::progress::bar;
use crate::evaluate::argmax;
use crate::trainer::cross_entropy;

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
}

/// The teacher, with the transform that shows it the student's views at its own resolution.
pub struct Teacher {
    pub model: Vit,
    /// Input side in pixels.
    pub size: u32,
    pub transform: Arc<Transform>,
}

/// The distillation loss of one batch.
///
/// `student` is the class head's logits, `distilled` the distillation head's (if the student has
/// one), `teacher` the teacher's logits for the same images and `teacher_top1` their argmax.
pub fn loss(
    student: Tensor<2>,
    distilled: Option<Tensor<2>>,
    (teacher, teacher_top1): (Tensor<2>, Vec<usize>),
    labels: &[usize],
    recipe: &DistillRecipe,
    smoothing: f64,
) -> Tensor<1> {
    let kd_input = distilled.unwrap_or_else(|| student.clone());
    let label_term = cross_entropy(student, labels, smoothing);
    let teacher_term = if recipe.hard {
        cross_entropy(kd_input, &teacher_top1, 0.0)
    } else {
        kl_divergence(kd_input, teacher, recipe.temperature)
    };
    label_term * (1.0 - recipe.alpha) + teacher_term * recipe.alpha
}

/// `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.
pub fn kl_divergence(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [batch, _] = student.dims();
    let log_p_student = log_softmax(student / temperature, 1);
    let log_p_teacher = log_softmax(teacher.clone() / temperature, 1);
    let p_teacher = softmax(teacher / temperature, 1);
    (p_teacher * (log_p_teacher - log_p_student)).sum() * (temperature * temperature / batch as f64)
}

/// The teacher's logits for every training image of one augmented view, `[samples, classes]`.
pub struct TeacherLogits {
    pub classes: usize,
    values: Vec<f32>,
}

impl TeacherLogits {
    /// Logits saved by [`TeacherLogits::save`] for `samples` images and `classes` classes, if `path` holds them.
    pub fn load(path: &Path, samples: usize, classes: usize) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        if bytes.len() != samples * classes * 4 {
            return None;
        }
        let values = le::f32s(&bytes);
        Some(Self { classes, values })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path.parent().expect("a cache file has a folder"))?;
        write_atomic(path, &le::bytes(&self.values))
    }

    /// Runs the teacher on every sample, as view `view` of `teacher.transform` (seeded like the student's).
    pub fn compute(teacher: &Teacher, samples: Arc<Vec<Sample>>, seed: u64, view: usize, device: &Device) -> Result<Self> {
        let classes = teacher.model.num_labels();
        let progress = bar(samples.len() as u64, &format!("teacher logits, view {view}"));
        let mut values = vec![f32::NAN; samples.len() * classes];
        let order = epoch_order(samples.len(), None);
        for batch in batches(samples.clone(), order, 32, teacher.transform.clone(), seed, view, 2) {
            let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, batch.shape), device);
            let logits = teacher.model.forward(pixels).into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            for (row, &i) in batch.indices.iter().enumerate() {
                values[i * classes..(i + 1) * classes].copy_from_slice(&logits[row * classes..(row + 1) * classes]);
            }
            progress.inc(batch.labels.len() as u64);
        }
        progress.finish_and_clear();
        if values.iter().any(|v| v.is_nan()) {
            bail!("the teacher could not see every training image");
        }
        Ok(Self { classes, values })
    }

    /// The teacher's logits from its own cached outputs of blocks `0..layers` (only its top blocks run).
    pub fn from_tokens(teacher: &Vit, tokens: &TokenCache, layers: usize, device: &Device) -> Result<Self> {
        let classes = teacher.num_labels();
        let progress = bar(tokens.len() as u64, &format!("teacher logits from its cached blocks 1-{layers}"));
        let mut values = Vec::with_capacity(tokens.len() * classes);
        let order: Vec<usize> = (0..tokens.len()).collect();
        for chunk in order.chunks(32) {
            let logits = teacher.forward_from_layer(tokens.batch(chunk, device), layers);
            values.extend(logits.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        Ok(Self { classes, values })
    }

    /// `[indices.len(), classes]` logits of these samples, and their argmax.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<2>, Vec<usize>) {
        let rows: Vec<f32> = indices.iter().flat_map(|&i| self.values[i * self.classes..(i + 1) * self.classes].iter().copied()).collect();
        let top1 = rows.chunks_exact(self.classes).map(argmax).collect();
        (Tensor::from_data(TensorData::new(rows, [indices.len(), self.classes]), device), top1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
