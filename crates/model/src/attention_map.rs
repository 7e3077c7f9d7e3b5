//! Attention maps for display: where the CLS token looks, as a `[rows, cols]` grid over the patches.
//!
//! Four views of the per-layer probabilities that [`crate::Vit::forward_with_attentions`] returns:
//! one head of one layer, the mean over the last layer's heads, attention rollout (Abnar &
//! Zuidema 2020, <https://arxiv.org/abs/2005.00928>): each layer's head-mean attention plus the
//! identity for the residual path, rows renormalised, multiplied through the layers, and one head's
//! mask as DINO draws them (Caron et al. 2021, <https://arxiv.org/abs/2104.14294>): the fewest
//! patches that hold 60 % of the head's CLS attention. All are class-agnostic; [`crate::explain`]
//! has the map for one class.

use burn::tensor::Tensor;

/// Which attention map to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMap {
    /// Attention rollout over all layers.
    Rollout,
    /// The last layer, averaged over its heads.
    LastLayerMean,
    /// One head of one layer (indices from 0).
    Head { layer: usize, head: usize },
    /// One head's mask: 1 on the fewest patches that hold [`MASK_MASS`] of its CLS attention over
    /// the patches, 0 elsewhere.
    HeadMask { layer: usize, head: usize },
}

/// The share of a head's attention that its mask keeps, as in DINO's figures.
pub const MASK_MASS: f64 = 0.6;

/// CLS attention to each patch, scaled so that each image's largest value is 1 (a head mask is 0 or 1).
///
/// # Shapes
/// - attentions: one `[batch, heads, tokens, tokens]` per layer, with `tokens = prefix + rows * cols`
/// - output: `[batch, rows, cols]`
///
/// # Panics
/// If `attentions` is empty, a layer or head index is out of range, or the grid does not match the tokens.
pub fn attention_map(attentions: &[Tensor<4>], map: AttentionMap, prefix: usize, [rows, cols]: [usize; 2]) -> Tensor<3> {
    let last = attentions.last().expect("attention maps need at least one layer");
    let [batch, _, tokens, _] = last.dims();
    assert_eq!(tokens, prefix + rows * cols, "{tokens} tokens do not make {prefix} prefix tokens and a {rows}x{cols} grid");
    let head_mean = |probs: &Tensor<4>| probs.clone().mean_dim(1).reshape([batch, tokens, tokens]);
    let matrix = match map {
        AttentionMap::LastLayerMean => head_mean(last),
        AttentionMap::Head { layer, head } => one_head(attentions, layer, head),
        AttentionMap::HeadMask { layer, head } => {
            let cls = cls_to_patches(one_head(attentions, layer, head), prefix, rows * cols);
            return head_mask(cls).reshape([batch, rows, cols]);
        }
        AttentionMap::Rollout => {
            let device = last.device();
            let identity = Tensor::<2>::eye(tokens, &device).unsqueeze::<3>().expand([batch, tokens, tokens]);
            attentions.iter().fold(identity.clone(), |rollout, probs| {
                let with_residual = (head_mean(probs) + identity.clone()) / 2.0;
                let normalised = with_residual.clone() / with_residual.sum_dim(2);
                normalised.matmul(rollout)
            })
        }
    };
    peak_normalised(cls_to_patches(matrix, prefix, rows * cols)).reshape([batch, rows, cols])
}

/// `[batch, tokens, tokens]`: head `head` of layer `layer`.
fn one_head(attentions: &[Tensor<4>], layer: usize, head: usize) -> Tensor<3> {
    let probs = &attentions[layer];
    let [batch, heads, tokens, _] = probs.dims();
    assert!(head < heads, "layer {layer} has {heads} heads, asked for head {head}");
    probs.clone().narrow(1, head, 1).reshape([batch, tokens, tokens])
}

/// The CLS row of `[batch, tokens, tokens]` over the `patches` tokens after `prefix`: `[batch, patches]`.
pub(crate) fn cls_to_patches(matrix: Tensor<3>, prefix: usize, patches: usize) -> Tensor<2> {
    let batch = matrix.dims()[0];
    matrix.narrow(1, 0, 1).narrow(2, prefix, patches).reshape([batch, patches])
}

/// Each row divided by its maximum.
pub fn peak_normalised(rows: Tensor<2>) -> Tensor<2> {
    let peak = rows.clone().max_dim(1).clamp_min(1e-12);
    rows / peak
}

/// 1 where a patch belongs to the fewest that hold [`MASK_MASS`] of its row (a head's CLS
/// attention over the patches), 0 elsewhere.
///
/// A patch is kept when the patches that it outweighs or equals hold more than `1 - MASK_MASS`
/// of the row: DINO's sort and cumulative sum, written as a pairwise comparison (elementwise ops
/// that every backend has, and at most 256 x 256 per row).
pub fn head_mask(cls: Tensor<2>) -> Tensor<2> {
    let [batch, patches] = cls.dims();
    let share = cls.clone() / cls.sum_dim(1);
    let mine = share.clone().unsqueeze_dim::<3>(2).expand([batch, patches, patches]);
    let others = share.unsqueeze_dim::<3>(1).expand([batch, patches, patches]);
    let outweighed = others.clone().lower_equal(mine).float() * others;
    outweighed.sum_dim(2).reshape([batch, patches]).greater_elem(1.0 - MASK_MASS).float()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData, Tolerance};

    fn uniform(tokens: usize, device: &Device) -> Tensor<4> {
        Tensor::ones([2, 3, tokens, tokens], device) / tokens as f64
    }

    #[test]
    fn uniform_attention_gives_a_flat_map() {
        let device = Device::flex();
        let layers = vec![uniform(1 + 6, &device); 3];
        for map in [AttentionMap::Rollout, AttentionMap::LastLayerMean, AttentionMap::Head { layer: 1, head: 2 }] {
            let out = attention_map(&layers, map, 1, [2, 3]);
            assert_eq!(out.dims(), [2, 2, 3]);
            out.into_data().assert_approx_eq::<f32>(&TensorData::new(vec![1.0f32; 12], [2, 2, 3]), Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn rollout_follows_attention_through_layers() {
        let device = Device::flex();
        // Layer 1: CLS looks only at patch 0 (token 1). Layer 2: CLS looks only at itself.
        // Rollout keeps half of layer 1's focus through layer 2's residual path: patch 0 is the peak.
        let tokens = 1 + 4;
        let mut first = vec![0.0f32; tokens * tokens];
        let mut second = vec![0.0f32; tokens * tokens];
        for t in 0..tokens {
            first[t * tokens + t] = 1.0;
            second[t * tokens + t] = 1.0;
        }
        first[0] = 0.0;
        first[1] = 1.0;
        let layer = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, tokens, tokens]), &device);
        let out = attention_map(&[layer(first), layer(second)], AttentionMap::Rollout, 1, [2, 2]);
        let values = out.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values[0], 1.0);
        assert!(values[1..].iter().all(|&v| v == 0.0), "{values:?}");
    }

    #[test]
    #[should_panic(expected = "layer 0 has 3 heads, asked for head 3")]
    fn head_out_of_range_panics() {
        let device = Device::flex();
        attention_map(&[uniform(5, &device)], AttentionMap::Head { layer: 0, head: 3 }, 1, [2, 2]);
    }
}
