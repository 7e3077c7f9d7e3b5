//! Which attention heads and MLP neurons matter, measured on data (Michel et al. 2019, "Are Sixteen
//! Heads Really Better than One?"): the gradient of the loss with respect to a mask on each head's
//! output, in absolute value, summed over batches and normalised per layer.
//!
//! No mask needs to exist in the model: the output projection is linear, so the mask gradient of
//! head `h` equals `sum(W_o[h] * dL/dW_o[h])` over the projection's weights that read head `h`
//! (and likewise for an MLP neuron and the second MLP layer's weights that read it).

use std::sync::Arc;

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use vitrine_model::Vit;
use vitrine_model::prune::Keep;

use crate::data::Sample;
use crate::evaluate::to_host;
use crate::data::loader::{Transform, epoch_order, for_each_batch};
use crate::loss::cross_entropy;

/// Importance per layer of each head and each MLP neuron (normalised per layer to unit L2 norm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    pub heads: Vec<Vec<f64>>,
    pub neurons: Vec<Vec<f64>>,
}

/// Measures importance on `samples` (at most `limit`) with `model` on an autodiff device.
pub fn measure(
    model: &Vit,
    samples: Arc<Vec<Sample>>,
    transform: Arc<Transform>,
    batch_size: usize,
    limit: usize,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Importance> {
    let layers = &model.vit.encoder.layer;
    let mut heads: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.attention.num_heads()]).collect();
    let mut neurons: Vec<Vec<f64>> = layers.iter().map(|l| vec![0.0; l.output.dense.weight.dims()[0]]).collect();
    let order: Vec<usize> = epoch_order(samples.len(), Some((0, 0))).into_iter().take(limit).collect();
    for_each_batch(samples, order, batch_size, transform, (0, 0), device, progress, |pixels, labels, _| {
        let grads = cross_entropy(model.forward(pixels), labels, 0.0).backward();
        for (l, layer) in layers.iter().enumerate() {
            let mask_gradient = |weight: Tensor<2>, groups: usize| -> Result<Vec<f32>> {
                let grad = weight.grad(&grads).ok_or_else(|| anyhow::anyhow!("layer {l} has no gradient: is the model frozen?"))?;
                let [rows, cols] = weight.dims();
                let product = weight.inner() * grad;
                let per_group = product.reshape([groups, rows / groups * cols]).sum_dim(1);
                to_host(per_group)
            };
            let h = mask_gradient(layer.attention.output.dense.weight.val(), heads[l].len())?;
            let m = mask_gradient(layer.output.dense.weight.val(), neurons[l].len())?;
            heads[l].iter_mut().zip(h).for_each(|(a, g)| *a += f64::from(g.abs()));
            neurons[l].iter_mut().zip(m).for_each(|(a, g)| *a += f64::from(g.abs()));
        }
        Ok(())
    })?;
    for scores in heads.iter_mut().chain(neurons.iter_mut()) {
        let norm = scores.iter().map(|s| s * s).sum::<f64>().sqrt();
        if norm > 0.0 {
            scores.iter_mut().for_each(|s| *s /= norm);
        }
    }
    Ok(Importance { heads, neurons })
}

/// Keeps all but the `remove_heads` least important heads (ranked across layers, never the last
/// head of a layer) and, in each layer, all but the `mlp_fraction` least important neurons.
pub fn plan(importance: &Importance, remove_heads: usize, mlp_fraction: f64) -> Keep {
    let mut ranked: Vec<(f64, usize, usize)> = importance
        .heads
        .iter()
        .enumerate()
        .flat_map(|(l, scores)| scores.iter().enumerate().map(move |(h, &s)| (s, l, h)))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let mut heads: Vec<Vec<usize>> = importance.heads.iter().map(|s| (0..s.len()).collect()).collect();
    let mut removed = 0;
    for (_, l, h) in ranked {
        if removed == remove_heads {
            break;
        }
        if heads[l].len() > 1 {
            heads[l].retain(|&x| x != h);
            removed += 1;
        }
    }
    let neurons = importance
        .neurons
        .iter()
        .map(|scores| {
            let drop = ((scores.len() as f64 * mlp_fraction).round() as usize).min(scores.len() - 1);
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            let mut kept: Vec<usize> = order[drop..].to_vec();
            kept.sort();
            kept
        })
        .collect();
    Keep { heads, neurons }
}

/// Keeps the `heads` most important heads of every layer and drops the `mlp_fraction` least
/// important neurons of every MLP (a uniformly narrower student).
pub fn plan_per_layer(importance: &Importance, heads: usize, mlp_fraction: f64) -> Keep {
    let top = |scores: &Vec<f64>, keep: usize| {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let mut kept: Vec<usize> = order[..keep.clamp(1, scores.len())].to_vec();
        kept.sort();
        kept
    };
    Keep {
        heads: importance.heads.iter().map(|s| top(s, heads)).collect(),
        neurons: importance
            .neurons
            .iter()
            .map(|s| top(s, s.len() - ((s.len() as f64 * mlp_fraction).round() as usize).min(s.len() - 1)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_removes_the_least_important_and_keeps_one_head_per_layer() {
        let importance = Importance {
            heads: vec![vec![0.1, 0.9, 0.2], vec![0.05, 0.99]],
            neurons: vec![vec![0.5, 0.1, 0.3, 0.9], vec![0.2, 0.1, 0.7, 0.6]],
        };
        let keep = plan(&importance, 3, 0.5);
        // Ranked: (1,0) 0.05, (0,0) 0.1, (0,2) 0.2, ...: three removals, layer 1 keeps head 1.
        assert_eq!(keep.heads, vec![vec![1], vec![1]]);
        assert_eq!(keep.neurons, vec![vec![0, 3], vec![2, 3]]);
        let per_layer = plan_per_layer(&importance, 2, 0.25);
        assert_eq!(per_layer.heads, vec![vec![1, 2], vec![0, 1]]);
        assert_eq!(per_layer.neurons, vec![vec![0, 2, 3], vec![0, 2, 3]]);
        let all = plan(&importance, 10, 0.0);
        assert_eq!(all.heads, vec![vec![1], vec![1]]);
        assert_eq!(all.neurons[0].len(), 4);
    }
}
