//! Bicubic resizing of position embeddings, exactly as PyTorch's `F.interpolate` does it.
//!
//! A separable resize is two small matrix products, `rows @ grid @ cols^T`, so the weights are
//! computed here on the host (a few hundred numbers) and applied with ordinary tensor ops: the same
//! result on every backend, and no dependence on how a backend implements bicubic kernels.
//! Ported from ATen `UpSampleKernel.cpp` (`HelperInterpCubic`) and `UpSample.h`. transformers 5.24 resizes
//! position embeddings this way for ViT, DeiT and DINOv2 alike (`size=`, no antialias, no +0.1 offset).

/// One axis of a resize: `weights[out * input + in]`, rows of length `input`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeWeights {
    pub input: usize,
    pub output: usize,
    pub weights: Vec<f32>,
}

/// `mode="bicubic", align_corners=False, antialias=False`: Keys' cubic with A = -0.75 on the 4 nearest
/// inputs, indices clamped at the border (`upsample_bicubic2d`).
pub fn bicubic(input: usize, output: usize) -> ResizeWeights {
    const A: f32 = -0.75;
    let scale = input as f32 / output as f32;
    let mut weights = vec![0.0f32; output * input];
    for out in 0..output {
        // area_pixel_compute_source_index(cubic = true): no clamping at 0.
        let real = scale * (out as f32 + 0.5) - 0.5;
        // guard_index_and_lambda
        let index = (real.floor() as i64).min(input as i64 - 1);
        let t = (real - index as f32).clamp(0.0, 1.0);
        let coeffs = [
            cubic_far(t + 1.0, A),
            cubic_near(t, A),
            cubic_near(1.0 - t, A),
            cubic_far(2.0 - t, A),
        ];
        for (tap, coeff) in coeffs.into_iter().enumerate() {
            let source = (index - 1 + tap as i64).clamp(0, input as i64 - 1) as usize;
            weights[out * input + source] += coeff;
        }
    }
    ResizeWeights { input, output, weights }
}

/// Keys' cubic for |x| <= 1 (`cubic_convolution1`).
fn cubic_near(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Keys' cubic for 1 < |x| < 2 (`cubic_convolution2`).
fn cubic_far(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(w: &ResizeWeights, x: &[f32]) -> Vec<f32> {
        (0..w.output)
            .map(|o| (0..w.input).map(|i| w.weights[o * w.input + i] * x[i]).sum())
            .collect()
    }

    #[test]
    fn same_size_is_identity() {
        for w in [bicubic(5, 5)] {
            let x = [1.0, -2.0, 3.0, 0.5, 7.0];
            let y = apply(&w, &x);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-6, "{x:?} -> {y:?}");
            }
        }
    }

    #[test]
    fn rows_sum_to_one() {
        for (i, o) in [(4, 6), (6, 4), (37, 16), (2, 7)] {
            for w in [bicubic(i, o)] {
                for row in w.weights.chunks(i) {
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                }
            }
        }
    }

    /// Expected values printed by torch 2.15 `F.interpolate(x, size=(1, n), mode="bicubic", align_corners=False)`.
    fn assert_close(got: Vec<f32>, torch: &[f32]) {
        assert_eq!(got.len(), torch.len());
        for (a, b) in got.iter().zip(torch) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs torch {torch:?}");
        }
    }

    #[test]
    fn matches_torch() {
        assert_close(
            apply(&bicubic(4, 6), &[0.0, 1.0, 4.0, 9.0]),
            &[-0.08680558, 0.21875, 1.430555, 3.1527777, 6.78125, 9.434029],
        );
    }
}
