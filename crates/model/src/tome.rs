//! Token merging (ToMe; Bolya et al. 2022, <https://arxiv.org/abs/2210.09461>): a training-free
//! speed-up. Between attention and MLP, every block merges its `r` most similar pairs of tokens, so
//! each later block sees fewer tokens.
//!
//! Bipartite soft matching: tokens alternate into set A (even positions) and set B (odd). Each A
//! token finds its most similar B token (cosine similarity of the attention keys, averaged over
//! heads); the `r` A tokens with the best matches are averaged into their B tokens, weighted by how
//! many patches each token already stands for (its size). Attention then adds `log(size)` to its
//! scores (proportional attention), so a merged token weighs as much as the patches it replaced.
//!
//! Everything here is matrix products and comparisons on the device, with no sort and no read-back,
//! so it runs unchanged on WebGPU. The prefix tokens (CLS, DeiT's distillation token) are never merged.

use burn::tensor::{Int, Tensor, TensorData};

use crate::config::VitConfig;
use crate::preprocess::PreprocessConfig;

/// Refuses `r` merged pairs per block that would leave no patch token by the last block on the
/// smallest input `preprocess` makes for `config`'s model: it would answer from CLS alone. The
/// bound is ToMe's own largest setting (r = 16 for ViT-B/16 at 224 px: 196 patches, 12 blocks).
pub fn check_pairs(r: usize, config: &VitConfig, preprocess: &PreprocessConfig) -> Result<(), String> {
    let Some([height, width]) = preprocess.smallest_output() else { return Ok(()) };
    let patches = (height as usize / config.patch_size) * (width as usize / config.patch_size);
    let blocks = config.num_hidden_layers.max(1);
    let most = patches.saturating_sub(1) / blocks;
    if r > most {
        return Err(format!(
            "token merging of {r} pairs in each of {blocks} blocks needs more than the {patches} patches of a \
             {height}x{width} input: at most {most}"
        ));
    }
    Ok(())
}

/// The running state of a merged sequence: how many patches each token stands for and, when
/// attention maps are asked for, which original tokens each current token holds.
pub struct Merging {
    /// `[batch, tokens, 1]`.
    pub size: Tensor<3>,
    /// `[batch, tokens, original tokens]`, 0 or 1.
    pub source: Option<Tensor<3>>,
    /// Leading tokens that are never merged: 1 (CLS) or 2 (CLS and distillation token).
    prefix: usize,
}

impl Merging {
    /// The state of an unmerged sequence `[batch, tokens, hidden]`.
    pub fn new(hidden_states: &Tensor<3>, prefix: usize, track_source: bool) -> Self {
        let [batch, tokens, _] = hidden_states.dims();
        let device = hidden_states.device();
        let size = Tensor::ones([batch, tokens, 1], &device);
        let source = track_source.then(|| Tensor::<2>::eye(tokens, &device).unsqueeze::<3>().expand([batch, tokens, tokens]));
        Self { size, source, prefix }
    }

    /// Merges up to `r` pairs of `hidden_states` (fewer if there are not enough tokens), matched
    /// by the similarity of `metric`.
    ///
    /// # Shapes
    /// - hidden_states: `[batch, tokens, hidden]`
    /// - metric: `[batch, tokens, channels]`
    /// - output: `[batch, tokens - r, hidden]`
    pub fn merge(&mut self, hidden_states: Tensor<3>, metric: Tensor<3>, r: usize) -> Tensor<3> {
        let Some(plan) = Plan::new(metric, r, self.prefix) else { return hidden_states };
        let weighted = plan.apply(hidden_states * self.size.clone());
        self.size = plan.apply(self.size.clone());
        self.source = self.source.take().map(|source| plan.apply(source));
        weighted / self.size.clone()
    }

    /// Attention probabilities over the current (merged) tokens, spread back over the original
    /// tokens: each original token gets its group's attention divided by the group's size, so every
    /// row still sums to 1 and attention maps can be drawn on the image's patches.
    ///
    /// # Shapes
    /// - probs: `[batch, heads, tokens, tokens]`
    /// - output: `[batch, heads, original tokens, original tokens]`
    ///
    /// # Panics
    /// If the state was made without `track_source`.
    pub fn unmerge_attention(&self, probs: Tensor<4>) -> Tensor<4> {
        let source = self.source.clone().expect("unmerging attention needs the merge sources (track_source)");
        let [batch, heads, tokens, _] = probs.dims();
        let original = source.dims()[2];
        // Each original token sits in exactly one current token: gather by that index rather than
        // multiply by the 0/1 source matrix, which costs tokens x original^2 per head and block.
        let group = source.argmax(1); // [batch, 1, original]
        let per_patch = probs / self.size.clone().swap_dims(1, 2).unsqueeze_dim::<4>(1);
        // One gather from the flattened matrix: entry (i, j) is (group(i), group(j)).
        let flat = group.clone().swap_dims(1, 2) * tokens as i64 + group; // [batch, original, original]
        let flat = flat.reshape([batch, 1, original * original]).expand([batch, heads, original * original]);
        per_patch.reshape([batch, heads, tokens * tokens]).gather(2, flat).reshape([batch, heads, original, original])
    }
}

/// One block's matching, as two selection matrices over set A.
struct Plan {
    /// Even positions (set A) and odd positions (set B).
    a: Tensor<1, Int>,
    b: Tensor<1, Int>,
    /// `[batch, a - r, a]`: picks the unmerged A tokens, in their original order.
    keep: Tensor<3>,
    /// `[batch, b, a]`: adds each merged A token to its B token.
    into: Tensor<3>,
    /// DeiT: the distillation token (B's first) goes back to position 1.
    distill: bool,
}

impl Plan {
    fn new(metric: Tensor<3>, r: usize, prefix: usize) -> Option<Self> {
        let [batch, tokens, _] = metric.dims();
        let r = r.min(tokens.saturating_sub(prefix) / 2);
        if r == 0 {
            return None;
        }
        let device = metric.device();
        let (len_a, len_b) = (tokens.div_ceil(2), tokens / 2);
        let a = Tensor::<1, Int>::arange_step(0..tokens as i64, 2, &device);
        let b = Tensor::<1, Int>::arange_step(1..tokens as i64, 2, &device);
        let unit = metric.clone() / metric.powi_scalar(2).sum_dim(2).sqrt();
        let scores = unit.clone().select(1, a.clone()).matmul(unit.select(1, b.clone()).swap_dims(1, 2));
        // The prefix is never merged: CLS (A's first) matches nothing, nothing matches the distillation token (B's first).
        let blocked = |len: usize, blocked: bool| {
            let mut row = vec![0.0f32; len];
            if blocked {
                row[0] = f32::NEG_INFINITY;
            }
            Tensor::<1>::from_data(TensorData::new(row, [len]), &device)
        };
        let scores = scores
            + blocked(len_a, prefix >= 1).reshape([1, len_a, 1])
            + blocked(len_b, prefix >= 2).reshape([1, 1, len_b]);
        let (best, partner) = scores.max_dim_with_indices(2);

        // Rank of each A token by its best score (descending; ties go to the lower index): the top r merge.
        let mine = best.clone().expand([batch, len_a, len_a]);
        let theirs = best.swap_dims(1, 2).expand([batch, len_a, len_a]);
        let earlier = Tensor::<2>::ones([len_a, len_a], &device).tril(-1).unsqueeze::<3>().expand([batch, len_a, len_a]);
        let ahead = theirs.clone().greater(mine.clone()).float() + theirs.equal(mine).float() * earlier;
        let rank = ahead.sum_dim(2); // [batch, a, 1]
        let merged = rank.lower_elem(r as f64 - 0.5).float();
        let kept = merged.clone().neg() + 1.0;

        // Unmerged A token i goes to output slot (number of unmerged tokens up to i) - 1.
        let up_to = Tensor::<2>::ones([len_a, len_a], &device).tril(0).unsqueeze::<3>().expand([batch, len_a, len_a]);
        let slot = up_to.matmul(kept.clone()) - 1.0;
        let one_hot = |index: Tensor<3>, rows: usize| {
            let wanted = Tensor::<1, Int>::arange(0..rows as i64, &device).float().reshape([1, rows, 1]).expand([batch, rows, len_a]);
            (index.swap_dims(1, 2).expand([batch, rows, len_a]) - wanted).abs().lower_elem(0.5).float()
        };
        let keep = one_hot(slot, len_a - r) * kept.swap_dims(1, 2);
        let into = one_hot(partner.float(), len_b) * merged.swap_dims(1, 2);
        Some(Self { a, b, keep, into, distill: prefix >= 2 })
    }

    /// Sums each merged token's members. `x`: `[batch, tokens, channels]`.
    fn apply(&self, x: Tensor<3>) -> Tensor<3> {
        let from_a = x.clone().select(1, self.a.clone());
        let unmerged = self.keep.clone().matmul(from_a.clone());
        let destinations = x.select(1, self.b.clone()) + self.into.clone().matmul(from_a);
        if !self.distill {
            return Tensor::cat(vec![unmerged, destinations], 1);
        }
        let ([_, kept, _], [_, len_b, _]) = (unmerged.dims(), destinations.dims());
        let mut parts = vec![unmerged.clone().narrow(1, 0, 1), destinations.clone().narrow(1, 0, 1)];
        // burn cannot narrow to zero length: skip a side that has nothing after its prefix token.
        if kept > 1 {
            parts.push(unmerged.narrow(1, 1, kept - 1));
        }
        if len_b > 1 {
            parts.push(destinations.narrow(1, 1, len_b - 1));
        }
        Tensor::cat(parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_is_bounded_by_the_patches() {
        let config = crate::model::tests::tiny(crate::ModelType::Vit, crate::config::Head::Linear);
        let preprocess = PreprocessConfig::default_for(&config);
        let [h, w] = preprocess.smallest_output().unwrap();
        let patches = (h as usize / config.patch_size) * (w as usize / config.patch_size);
        let most = (patches - 1) / config.num_hidden_layers;
        assert!(most > 0, "the fixture allows some merging");
        assert!(check_pairs(most, &config, &preprocess).is_ok());
        let err = check_pairs(99_999, &config, &preprocess).unwrap_err();
        assert!(err.contains(&format!("at most {most}")), "{err}");
    }
    use burn::tensor::{Device, Tolerance};

    fn tensor(values: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    #[test]
    fn merges_the_most_similar_pair_and_averages_by_size() {
        // A = tokens {0 (CLS), 2, 4}, B = {1, 3}; token 4 points exactly like token 1, so 4 merges into 1.
        let metric = tensor(vec![1., 0., 0., 1., 0., 0., 1., 1., 0., 1., 0., 0.1, 1., 0., 0.], [1, 5, 3]);
        let hidden = tensor(vec![0., 1., 2., 3., 4.], [1, 5, 1]);
        let mut merging = Merging::new(&hidden, 1, true);
        let merged = merging.merge(hidden, metric, 1);
        // Output: unmerged A tokens in order (0, 2), then B (1 with 4 averaged, 3).
        merged.into_data().assert_approx_eq::<f32>(&TensorData::new(vec![0., 2., 2.5, 3.], [1, 4, 1]), Tolerance::absolute(1e-6));
        merging.size.clone().into_data().assert_approx_eq::<f32>(&TensorData::new(vec![1., 1., 2., 1.], [1, 4, 1]), Tolerance::absolute(0.0));
    }

    #[test]
    fn never_merges_more_than_half_and_keeps_the_prefix() {
        let hidden = tensor((0..6).map(|v| v as f32).collect(), [1, 6, 1]);
        let metric = tensor(vec![1.0; 12], [1, 6, 2]);
        let mut merging = Merging::new(&hidden, 1, false);
        let merged = merging.merge(hidden, metric, 10);
        assert_eq!(merged.dims(), [1, 4, 1]);
        let values = merged.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values[0], 0.0, "CLS stays first and alone");
        assert_eq!(merging.size.into_data().try_to_vec::<f32>().unwrap().iter().sum::<f32>(), 6.0);
    }

    #[test]
    fn unmerged_attention_equals_the_source_matrix_product() {
        // Definition: sourceᵀ · (probs / size) · source, with source the 0/1 token-to-group matrix.
        let hidden = tensor((0..9).map(|v| v as f32).collect(), [1, 9, 1]);
        let metric = tensor((0..27).map(|v| ((v * 11) % 7) as f32 + 0.25).collect(), [1, 9, 3]);
        let mut merging = Merging::new(&hidden, 1, true);
        let tokens = merging.merge(hidden, metric, 3).dims()[1];
        let probs = Tensor::<4>::from_data(
            TensorData::new((0..2 * tokens * tokens).map(|v| ((v * 13) % 17) as f32 / 17.0).collect(), [1, 2, tokens, tokens]),
            &Device::flex(),
        );
        let source = merging.source.clone().unwrap().unsqueeze_dim::<4>(1).expand([1, 2, tokens, 9]);
        let per_patch = probs.clone() / merging.size.clone().swap_dims(1, 2).unsqueeze_dim::<4>(1);
        let expected = source.clone().swap_dims(2, 3).matmul(per_patch).matmul(source);
        merging.unmerge_attention(probs).into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn unmerged_attention_rows_still_sum_to_one() {
        let hidden = tensor((0..7).map(|v| v as f32).collect(), [1, 7, 1]);
        let metric = tensor((0..14).map(|v| ((v * 7) % 5) as f32 + 0.5).collect(), [1, 7, 2]);
        let mut merging = Merging::new(&hidden, 1, true);
        let merged = merging.merge(hidden, metric, 2);
        let tokens = merged.dims()[1];
        let probs = Tensor::<4>::ones([1, 2, tokens, tokens], &Device::flex()) / tokens as f64;
        let original = merging.unmerge_attention(probs);
        assert_eq!(original.dims(), [1, 2, 7, 7]);
        let sums = original.sum_dim(3).into_data().try_to_vec::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    }
}
