//! How faithful explanation maps are: the perturbation tests of Chefer, Gur and Wolf (CVPR 2021,
//! "Transformer Interpretability Beyond Attention Visualization", §4.3). Each image is explained
//! for its predicted class; then its patches are blanked (set to 0 after normalisation: the
//! dataset's mean colour) in the order of the map, a tenth of them at a time, and the image is
//! classified again.
//!
//! - positive: the most relevant patches go first; a faithful map makes the accuracy fall fast
//!   (a low area under the curve is better);
//! - negative: the least relevant go first; the accuracy should hold (a high area is better).
//!
//! The paper ranks the pixels of the map upsampled to the image; here whole patches go, the units
//! the ViT sees. The area is the mean accuracy over the curve (trapezoids over the fractions removed).

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vitrine_model::attention_map::{AttentionMap, attention_map};
use vitrine_model::explain::{for_gradients, relevance};
use vitrine_model::{PreprocessConfig, Vit};

use crate::data::Sample;
use crate::data::image_file::read_image;
use crate::evaluate::{argmax, to_host};

/// Where a ranking of the patches comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Explainer {
    /// Class-specific relevance ([`vitrine_model::explain`]).
    Relevance,
    Rollout,
    /// The last layer's heads, averaged.
    LastLayerMean,
    /// Uniform random values, seeded per image: the floor any map should beat.
    Random,
}

impl Explainer {
    pub const ALL: [Self; 4] = [Self::Relevance, Self::Rollout, Self::LastLayerMean, Self::Random];

    pub fn name(self) -> &'static str {
        match self {
            Self::Relevance => "relevance",
            Self::Rollout => "rollout",
            Self::LastLayerMean => "last-layer mean",
            Self::Random => "random",
        }
    }
}

/// One explainer's accuracy curves (fractions of [`Faithfulness::fractions`]) and their areas.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub explainer: &'static str,
    pub positive: Vec<f64>,
    pub negative: Vec<f64>,
    pub positive_auc: f64,
    pub negative_auc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Faithfulness {
    /// Images that were read and explained.
    pub images: usize,
    /// Fractions of the patches blanked at each step, from 0.
    pub fractions: Vec<f64>,
    pub curves: Vec<Curve>,
}

/// Runs both tests on `samples` with `model` (a classifier on a plain device); `columns` are the
/// model's outputs for the dataset's classes, in the dataset's order ([`crate::data::match_labels`]),
/// among which it predicts. `steps` fractions are tried: 0, 1/steps, ..., (steps - 1)/steps.
pub fn measure(
    model: &Vit,
    samples: &[Sample],
    preprocess: &PreprocessConfig,
    columns: &[usize],
    steps: usize,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Faithfulness> {
    if steps < 2 {
        bail!("faithfulness needs at least 2 steps, got {steps}");
    }
    let gradients = for_gradients(model);
    // correct[explainer][direction][step]: images still right after blanking.
    let mut correct = vec![[vec![0usize; steps], vec![0usize; steps]]; Explainer::ALL.len()];
    let mut images = 0;
    for (index, sample) in samples.iter().enumerate() {
        progress.inc(1);
        let rgb = match read_image(&sample.path) {
            Ok(rgb) => rgb,
            Err(error) => {
                progress.println(format!("warning: {}: {error}; left out", sample.path.display()));
                continue;
            }
        };
        let values = preprocess.pixels(&rgb).map_err(|e| anyhow::anyhow!("{}: {e}", sample.path.display()))?;
        let [h, w] = preprocess.output_size([rgb.height(), rgb.width()]).map(|s| s as usize);
        let pixels = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, 3, h, w]), device);
        let out = model.forward_with_attentions(pixels.clone());
        let logits = to_host(out.logits.expect("a classifier"))?;
        let predicted = predicted_among(&logits, columns);
        let grid = model.vit.embeddings.patch_grid([h, w]);
        let prefix = model.vit.embeddings.num_prefix_tokens();
        let maps = Explainer::ALL
            .iter()
            .map(|explainer| match explainer {
                Explainer::Relevance => to_host(relevance(&gradients, pixels.clone().autodiff(), &[predicted])),
                Explainer::Rollout => to_host(attention_map(&out.attentions, AttentionMap::Rollout, prefix, grid)),
                Explainer::LastLayerMean => to_host(attention_map(&out.attentions, AttentionMap::LastLayerMean, prefix, grid)),
                Explainer::Random => {
                    let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
                    Ok((0..grid[0] * grid[1]).map(|_| rng.random::<f32>()).collect())
                }
            })
            .collect::<Result<Vec<Vec<f32>>>>()?;
        // Every blanked variant of the image in one batch, explainer by explainer, positive test
        // first, then step by step; step 0 (nothing blanked) is the prediction above.
        let mut batch = Vec::new();
        for map in &maps {
            for most_relevant_first in [true, false] {
                let order = ranking(map, most_relevant_first);
                for step in 1..steps {
                    let removed = (order.len() * step + steps / 2) / steps;
                    batch.extend(blanked(&values, [h, w], grid, &order[..removed]));
                }
            }
        }
        let variants = batch.len() / values.len();
        let blanked_logits = to_host(model.forward(Tensor::from_data(TensorData::new(batch, [variants, 3, h, w]), device)))?;
        let truth = columns[sample.label];
        let right = |row: &[f32]| usize::from(predicted_among(row, columns) == truth);
        let mut rows = blanked_logits.chunks(logits.len());
        for per_direction in &mut correct {
            for counts in per_direction.iter_mut() {
                counts[0] += right(&logits);
                for count in &mut counts[1..] {
                    *count += right(rows.next().expect("a row per blanked variant"));
                }
            }
        }
        images += 1;
    }
    if images == 0 {
        bail!("no image could be read");
    }
    let fractions: Vec<f64> = (0..steps).map(|s| s as f64 / steps as f64).collect();
    let curves = Explainer::ALL
        .iter()
        .zip(&correct)
        .map(|(explainer, [positive, negative])| {
            let accuracy = |counts: &Vec<usize>| counts.iter().map(|&c| c as f64 / images as f64).collect::<Vec<_>>();
            let (positive, negative) = (accuracy(positive), accuracy(negative));
            Curve { explainer: explainer.name(), positive_auc: mean_area(&positive), negative_auc: mean_area(&negative), positive, negative }
        })
        .collect();
    Ok(Faithfulness { images, fractions, curves })
}

/// The model's output among `columns` (the dataset's classes) with the largest logit.
fn predicted_among(logits: &[f32], columns: &[usize]) -> usize {
    columns[argmax(&columns.iter().map(|&c| logits[c]).collect::<Vec<_>>())]
}

/// Patch indices from the most relevant to the least (or the reverse), ties to the lower index.
fn ranking(map: &[f32], most_relevant_first: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| {
        let by_value = if most_relevant_first { map[b].total_cmp(&map[a]) } else { map[a].total_cmp(&map[b]) };
        by_value.then(a.cmp(&b))
    });
    order
}

/// `values` (`[3, h, w]`) with the pixels of `patches` (indices over the `grid`) set to 0.
fn blanked(values: &[f32], [h, w]: [usize; 2], [rows, cols]: [usize; 2], patches: &[usize]) -> Vec<f32> {
    let (ph, pw) = (h / rows, w / cols);
    let mut out = values.to_vec();
    for &p in patches {
        let (r, c) = (p / cols, p % cols);
        for channel in 0..3 {
            for y in r * ph..(r + 1) * ph {
                let start = (channel * h + y) * w + c * pw;
                out[start..start + pw].fill(0.0);
            }
        }
    }
    out
}

/// The mean of a curve sampled at equal steps, by trapezoids.
fn mean_area(curve: &[f64]) -> f64 {
    let segments = curve.len() - 1;
    curve.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / segments as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_orders_both_ways_with_ties_to_the_lower_index() {
        let map = [0.2, 0.9, 0.2, 0.5];
        assert_eq!(ranking(&map, true), [1, 3, 0, 2]);
        assert_eq!(ranking(&map, false), [0, 2, 3, 1]);
    }

    #[test]
    fn blanking_zeroes_exactly_the_patches_pixels() {
        // A 4x6 input, a 2x3 grid of 2x2 patches: patch 4 is row 1, column 1.
        let values = vec![1.0; 3 * 4 * 6];
        let out = blanked(&values, [4, 6], [2, 3], &[4]);
        for channel in 0..3 {
            for y in 0..4 {
                for x in 0..6 {
                    let zero = (2..4).contains(&y) && (2..4).contains(&x);
                    assert_eq!(out[(channel * 4 + y) * 6 + x] == 0.0, zero, "channel {channel} ({y}, {x})");
                }
            }
        }
    }

    #[test]
    fn the_area_is_the_mean_of_the_curve() {
        assert_eq!(mean_area(&[1.0, 1.0, 1.0]), 1.0);
        assert_eq!(mean_area(&[1.0, 0.0]), 0.5);
        assert!((mean_area(&[1.0, 0.5, 0.0, 0.0]) - 1.0 / 3.0).abs() < 1e-12);
    }
}
