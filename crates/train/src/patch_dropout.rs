//! PatchDropout (Liu et al. 2022): during training each image keeps a random subset of its patch
//! tokens (the CLS and distillation tokens always stay). A transformer needs no fixed token count,
//! so the blocks run on fewer tokens: a regulariser for a student that memorises its few training
//! views, and cheaper steps. Evaluation always sees every token.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// Patch tokens kept out of `patches` when a fraction `drop` of them is dropped (at least one).
pub fn kept_patches(patches: usize, drop: f64) -> usize {
    (((1.0 - drop) * patches as f64).round() as usize).clamp(1, patches)
}

/// `hidden_states` with a fraction `drop` of each image's patch tokens removed, a different random
/// subset per image, drawn from `seed` (so a resumed run drops what the uninterrupted one did).
///
/// # Shapes
/// - hidden_states: `[batch, prefix + patches, hidden]`
/// - output: `[batch, prefix + kept_patches(patches, drop), hidden]`
pub fn drop_patches(hidden_states: Tensor<3>, prefix: usize, drop: f64, seed: u64) -> Tensor<3> {
    let [batch, tokens, hidden] = hidden_states.dims();
    let patches = tokens - prefix;
    let kept = kept_patches(patches, drop);
    if kept == patches {
        return hidden_states;
    }
    let indices = token_indices(batch, prefix, patches, kept, seed, &hidden_states.device());
    hidden_states.gather(1, indices.reshape([batch, prefix + kept, 1]).expand([batch, prefix + kept, hidden]))
}

/// `[batch, prefix + kept]` token indices: the prefix, then `kept` distinct patches in order.
fn token_indices(batch: usize, prefix: usize, patches: usize, kept: usize, seed: u64, device: &Device) -> Tensor<2, Int> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(batch * (prefix + kept));
    for _ in 0..batch {
        let mut chosen = sample(&mut rng, patches, kept).into_vec();
        chosen.sort_unstable();
        rows.extend((0..prefix).map(|t| t as i64));
        rows.extend(chosen.into_iter().map(|p| (prefix + p) as i64));
    }
    Tensor::from_data(TensorData::new(rows, [batch, prefix + kept]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token `t` of image `b` holds the value `100 * b + t` in every channel.
    fn numbered(batch: usize, tokens: usize, hidden: usize, device: &Device) -> Tensor<3> {
        let values: Vec<f32> = (0..batch).flat_map(|b| (0..tokens).flat_map(move |t| std::iter::repeat_n((100 * b + t) as f32, hidden))).collect();
        Tensor::from_data(TensorData::new(values, [batch, tokens, hidden]), device)
    }

    #[test]
    fn keeps_the_prefix_and_distinct_patches_of_each_image() {
        let device = Device::flex();
        let (batch, prefix, patches, hidden) = (3, 2, 16, 4);
        let out = drop_patches(numbered(batch, prefix + patches, hidden, &device), prefix, 0.25, 7);
        assert_eq!(out.dims(), [batch, prefix + 12, hidden]);
        let values = out.into_data().try_to_vec::<f32>().unwrap();
        let mut subsets = Vec::new();
        for b in 0..batch {
            let tokens: Vec<usize> =
                (0..prefix + 12).map(|t| values[(b * (prefix + 12) + t) * hidden] as usize - 100 * b).collect();
            assert_eq!(&tokens[..prefix], &[0, 1], "image {b} lost its prefix tokens");
            assert!(tokens[prefix..].windows(2).all(|w| w[0] < w[1]), "image {b}: {tokens:?}");
            assert!(tokens[prefix..].iter().all(|&t| t >= prefix && t < prefix + patches));
            subsets.push(tokens);
        }
        assert!(subsets[0] != subsets[1] || subsets[1] != subsets[2], "every image dropped the same patches");
    }

    #[test]
    fn the_same_seed_drops_the_same_patches_and_zero_drops_nothing() {
        let device = Device::flex();
        let input = numbered(2, 10, 3, &device);
        let a = drop_patches(input.clone(), 1, 0.5, 11).into_data();
        let b = drop_patches(input.clone(), 1, 0.5, 11).into_data();
        let c = drop_patches(input.clone(), 1, 0.5, 12).into_data();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(drop_patches(input.clone(), 1, 0.0, 11).into_data(), input.into_data());
        assert_eq!(kept_patches(81, 0.25), 61);
        assert_eq!(kept_patches(4, 0.99), 1);
    }
}
