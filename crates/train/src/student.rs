//! A student cut from its teacher (`vitrine distill` and `compress`): a subset of its blocks, each
//! block's most important heads and MLP neurons (measured on training images), and optionally a
//! smaller input grid, so that distillation starts from the teacher's own weights.

use std::sync::Arc;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use vitrine_model::prune::{Keep, prune, resize_positions, select_layers};
use vitrine_model::{Loaded, PreprocessConfig};

use crate::data::Sample;
use crate::data::loader::Transform;
use crate::importance;
use crate::progress::bar;

/// Training images the importance of heads and neurons is measured on.
const IMPORTANCE_IMAGES: usize = 256;

/// What the student keeps of its teacher.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// Teacher blocks kept, in order (empty: all).
    pub layers: Vec<usize>,
    /// Heads kept per block, the most important ones (`None`: all).
    pub heads: Option<usize>,
    /// Fraction of each MLP's neurons dropped, the least important ones.
    pub mlp_drop: f64,
    /// The student's input side: its position table is resized to that grid once, here.
    pub image_size: Option<u32>,
}

/// The student `cut` makes of `teacher`, built on `device` (the teacher is on its autodiff
/// version: importance takes gradients). `train` holds the images importance is measured on.
pub fn cut(teacher: &Loaded, preprocess: &PreprocessConfig, cut: &Cut, train: &[Sample], device: &Device) -> Result<Loaded> {
    let config = &teacher.config;
    let layers: Vec<usize> = if cut.layers.is_empty() { (0..config.num_hidden_layers).collect() } else { cut.layers.clone() };
    let heads = cut.heads.unwrap_or(config.num_attention_heads);
    if heads == 0 || heads > config.num_attention_heads {
        bail!("--student-heads must be between 1 and {}", config.num_attention_heads);
    }
    if !(0.0..1.0).contains(&cut.mlp_drop) {
        bail!("--student-mlp-drop must be in [0, 1)");
    }
    // Importance costs a teacher forward and backward pass over 256 images: skip it when every head
    // and neuron stays (a student that only drops blocks or changes resolution).
    let keep = if heads == config.num_attention_heads && cut.mlp_drop == 0.0 {
        Keep::all(config)
    } else {
        let transform = Arc::new(Transform::Eval(preprocess.clone()));
        let progress = bar(IMPORTANCE_IMAGES.min(train.len()) as u64, "teacher head importance");
        let scores = importance::measure(&teacher.model, Arc::new(train.to_vec()), transform, 16, IMPORTANCE_IMAGES, &device.clone().autodiff(), &progress)?;
        progress.finish_and_clear();
        importance::plan_per_layer(&scores, heads, cut.mlp_drop)
    };
    let model = teacher.model.valid();
    let (pruned, pruned_config) = prune(&model, config, &keep, device)?;
    let (mut student, mut student_config) = select_layers(&pruned, &pruned_config, &layers, device)?;
    if let Some(size) = cut.image_size {
        (student, student_config) = resize_positions(&student, &student_config, size as usize / config.patch_size, device)?;
    }
    let hf_config = teacher.hf_config.with_architecture(&student_config);
    Ok(Loaded { model: student, config: student_config, hf_config, labels: teacher.labels.clone(), family: teacher.family })
}
