//! AdamW's update of one parameter in one pass over its values, gradient and moments.
//!
//! burn's AdamW composes the update of about fifteen tensor operations, each a pass over the whole
//! parameter that allocates its result: at batch 1 that was a fifth of a training step
//! (`docs/performance.md`). This kernel does the same arithmetic, in the same order and without
//! fused multiply-adds, so that its result is bit for bit burn's.

use crate::parallel::{self, SharedMut};
use crate::simd::{F32x, dispatch};

/// Elements per thread task.
const CHUNK: usize = 1 << 14;

/// The constants of one AdamW step, as burn's `AdamW` derives them from its configuration, the
/// learning rate and the step number.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - lr * weight_decay`, what the parameter keeps before the update.
    pub keep: f32,
    pub lr: f32,
    /// The bias corrections `1 - beta^t` of the two moments.
    pub correction_1: f32,
    pub correction_2: f32,
}

impl AdamWStep {
    /// Step `time` (from 1) at learning rate `lr`.
    pub fn new(
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        lr: f64,
        time: i32,
    ) -> AdamWStep {
        AdamWStep {
            beta_1,
            beta_2,
            epsilon,
            keep: (1.0 - lr * weight_decay as f64) as f32,
            lr: lr as f32,
            correction_1: 1.0 - beta_1.powi(time),
            correction_2: 1.0 - beta_2.powi(time),
        }
    }
}

/// The parameter, its gradient and its two moments, all of one length.
pub struct AdamWBuffers<'a> {
    pub param: &'a mut [f32],
    pub grad: &'a [f32],
    pub moment_1: &'a mut [f32],
    pub moment_2: &'a mut [f32],
}

/// One AdamW step in place: the moments take in the gradient, the parameter decays and moves.
pub fn adamw_update(b: AdamWBuffers<'_>, step: AdamWStep) {
    let n = b.param.len();
    assert!(
        b.grad.len() == n && b.moment_1.len() == n && b.moment_2.len() == n,
        "adamw: parameter, gradient and moments differ in length"
    );
    // Chunks of the parameter by index; every buffer is cut at the same places.
    let (param, m, v) = (SharedMut(b.param.as_mut_ptr()), SharedMut(b.moment_1.as_mut_ptr()), SharedMut(b.moment_2.as_mut_ptr()));
    let grad = b.grad;
    parallel::for_each_index(n.div_ceil(CHUNK), |i| {
        let (start, len) = (i * CHUNK, CHUNK.min(n - i * CHUNK));
        // Each index owns the chunk [start, start + len) of every buffer, inside its length.
        dispatch!(update_chunk(param.at(start), grad[start..].as_ptr(), m.at(start), v.at(start), len, step))
    });
}

#[inline(always)]
unsafe fn update_chunk<V: F32x>(
    p: *mut f32,
    g: *const f32,
    m: *mut f32,
    v: *mut f32,
    n: usize,
    s: AdamWStep,
) {
    unsafe {
        let c = Constants::<V>::new(s);
        let mut i = 0;
        while i + V::LANES <= n {
            let (p2, m2, v2) = c.update(
                V::load(p.add(i)),
                V::load(g.add(i)),
                V::load(m.add(i)),
                V::load(v.add(i)),
            );
            p2.store(p.add(i));
            m2.store(m.add(i));
            v2.store(v.add(i));
            i += V::LANES;
        }
        if i < n {
            let k = n - i;
            let (p2, m2, v2) = c.update(
                V::load_partial(p.add(i), k),
                V::load_partial(g.add(i), k),
                V::load_partial(m.add(i), k),
                V::load_partial(v.add(i), k),
            );
            p2.store_partial(p.add(i), k);
            m2.store_partial(m.add(i), k);
            v2.store_partial(v.add(i), k);
        }
    }
}

struct Constants<V> {
    beta_1: V,
    beta_2: V,
    factor_1: V,
    factor_2: V,
    correction_1: V,
    correction_2: V,
    epsilon: V,
    keep: V,
    lr: V,
}

impl<V: F32x> Constants<V> {
    #[inline(always)]
    unsafe fn new(s: AdamWStep) -> Self {
        unsafe {
            Constants {
                beta_1: V::splat(s.beta_1),
                beta_2: V::splat(s.beta_2),
                factor_1: V::splat(1.0 - s.beta_1),
                factor_2: V::splat(1.0 - s.beta_2),
                correction_1: V::splat(s.correction_1),
                correction_2: V::splat(s.correction_2),
                epsilon: V::splat(s.epsilon),
                keep: V::splat(s.keep),
                lr: V::splat(s.lr),
            }
        }
    }

    /// burn's AdamW, operation for operation (`burn-optim`'s `adamw.rs`).
    #[inline(always)]
    unsafe fn update(&self, p: V, g: V, m: V, v: V) -> (V, V, V) {
        unsafe {
            let m = m.mul(self.beta_1).add(g.mul(self.factor_1));
            let v = v.mul(self.beta_2).add(g.mul(g).mul(self.factor_2));
            let m_hat = m.div(self.correction_1);
            let v_hat = v.div(self.correction_2);
            let delta = m_hat.div(v_hat.sqrt().add(self.epsilon));
            (p.mul(self.keep).sub(delta.mul(self.lr)), m, v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The update written out on scalars, in burn's order.
    fn reference(p: f32, g: f32, m: f32, v: f32, s: AdamWStep) -> (f32, f32, f32) {
        let m = m * s.beta_1 + g * (1.0 - s.beta_1);
        let v = v * s.beta_2 + g * g * (1.0 - s.beta_2);
        let delta = (m / s.correction_1) / ((v / s.correction_2).sqrt() + s.epsilon);
        (p * s.keep - delta * s.lr, m, v)
    }

    #[test]
    fn every_lane_and_the_tail_match_the_scalar_update_exactly() {
        let n = 3 * CHUNK + 37; // several tasks and a partial vector
        let mut param = crate::test_values(n, 1);
        let grad: Vec<f32> = crate::test_values(n, 2).iter().map(|g| g * 1e-2).collect();
        let mut m = crate::test_values(n, 3)
            .iter()
            .map(|x| x * 1e-3)
            .collect::<Vec<_>>();
        let mut v = crate::test_values(n, 4)
            .iter()
            .map(|x| x * x * 1e-5)
            .collect::<Vec<_>>();
        let step = AdamWStep::new(0.9, 0.999, 1e-5, 0.05, 3e-4, 7);
        let want: Vec<_> = (0..n)
            .map(|i| reference(param[i], grad[i], m[i], v[i], step))
            .collect();
        adamw_update(
            AdamWBuffers {
                param: &mut param,
                grad: &grad,
                moment_1: &mut m,
                moment_2: &mut v,
            },
            step,
        );
        for (i, (p, m1, m2)) in want.into_iter().enumerate() {
            assert_eq!((param[i], m[i], v[i]), (p, m1, m2), "element {i}");
        }
    }
}
