//! LayerNorm over the last axis of a row-major `[rows, width]` buffer: the forward, which can keep
//! each row's mean and inverse standard deviation, and the backward from them. burn composes it of
//! about ten tensor operations forward and as many backward under autodiff, each a pass over the
//! activations.

use crate::parallel::{self, SharedMut};
use crate::simd::{F32x, dispatch};

/// Rows per thread task.
const ROWS: usize = 16;

/// `out[r] = (x[r] - mean) / sqrt(var + epsilon) * gamma + beta`, the variance biased (as
/// PyTorch's); with `stats`, each row's mean and `1 / sqrt(var + epsilon)` are written there
/// (`[rows, 2]`).
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, out: &mut [f32], stats: Option<&mut [f32]>) {
    let width = gamma.len();
    let rows = x.len() / width.max(1);
    assert!(beta.len() == width && out.len() == x.len() && x.len() == rows * width, "layer_norm: shapes disagree");
    let stats = stats.map(|s| {
        assert_eq!(s.len(), 2 * rows, "layer_norm: two statistics per row");
        SharedMut(s.as_mut_ptr())
    });
    let out = SharedMut(out.as_mut_ptr());
    parallel::for_each_index(rows.div_ceil(ROWS), |task| {
        for r in task * ROWS..rows.min((task + 1) * ROWS) {
            let row = &x[r * width..(r + 1) * width];
            // SAFETY: row r of `out` and of `stats` belongs to this task alone.
            let (o, s) = unsafe { (std::slice::from_raw_parts_mut(out.at(r * width), width), stats.map(|s| s.at(2 * r))) };
            let (mean, rstd) = dispatch!(normalize_row(row, gamma, beta, epsilon, o));
            if let Some(s) = s {
                unsafe { (*s, *s.add(1)) = (mean, rstd) };
            }
        }
    });
}

/// The gradients of `x`, `gamma` and `beta` from the output's (`grad`), with the statistics the
/// forward kept: `(dx, dgamma, dbeta)`.
pub fn backward(x: &[f32], gamma: &[f32], stats: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let rows = x.len() / width.max(1);
    assert!(grad.len() == x.len() && stats.len() == 2 * rows, "layer_norm backward: shapes disagree");
    // Not cleared: every row is written below.
    let mut dx = Vec::<f32>::with_capacity(x.len());
    let tasks = rows.div_ceil(ROWS);
    // Per task: its rows' sums for dgamma, then for dbeta, added up after.
    let mut partial = vec![0f32; tasks * 2 * width];
    let (dx_at, partial_at) = (SharedMut(dx.as_mut_ptr()), SharedMut(partial.as_mut_ptr()));
    parallel::for_each_index(tasks, |task| {
        // SAFETY: the rows of this task, and its own partial sums, are written by it alone.
        let sums = unsafe { std::slice::from_raw_parts_mut(partial_at.at(task * 2 * width), 2 * width) };
        let (dgamma, dbeta) = sums.split_at_mut(width);
        for r in task * ROWS..rows.min((task + 1) * ROWS) {
            let span = r * width..(r + 1) * width;
            let out = unsafe { std::slice::from_raw_parts_mut(dx_at.at(r * width), width) };
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            dispatch!(backward_row(&x[span.clone()], &grad[span], gamma, mean, rstd, out, dgamma, dbeta));
        }
    });
    // SAFETY: every row of dx was written above.
    unsafe { dx.set_len(x.len()) };
    let (mut dgamma, mut dbeta) = (vec![0f32; width], vec![0f32; width]);
    for sums in partial.chunks_exact(2 * width) {
        dgamma.iter_mut().zip(&sums[..width]).for_each(|(d, s)| *d += s);
        dbeta.iter_mut().zip(&sums[width..]).for_each(|(d, s)| *d += s);
    }
    (dx, dgamma, dbeta)
}

/// The sum of `f(i)` over the row's vectors (the tail zero-padded).
#[inline(always)]
unsafe fn sum_lanes<V: F32x>(n: usize, f: impl Fn(usize, usize) -> V) -> f32 {
    unsafe {
        let mut acc = V::zero();
        let mut i = 0;
        while i + V::LANES <= n {
            acc = acc.add(f(i, V::LANES));
            i += V::LANES;
        }
        if i < n {
            acc = acc.add(f(i, n - i));
        }
        acc.reduce_sum()
    }
}

/// Loads `n <= LANES` values at `p`.
#[inline(always)]
unsafe fn load<V: F32x>(p: *const f32, n: usize) -> V {
    unsafe { if n == V::LANES { V::load(p) } else { V::load_partial(p, n) } }
}

#[inline(always)]
unsafe fn store<V: F32x>(v: V, p: *mut f32, n: usize) {
    unsafe { if n == V::LANES { v.store(p) } else { v.store_partial(p, n) } }
}

#[inline(always)]
unsafe fn normalize_row<V: F32x>(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, out: &mut [f32]) -> (f32, f32) {
    let (n, px) = (x.len(), x.as_ptr());
    unsafe {
        let mean = sum_lanes::<V>(n, #[inline(always)] |i, k| load::<V>(px.add(i), k)) / n as f32;
        let m = V::splat(mean);
        // A tail's padding lanes load as 0, so their deviation is -mean: masked out.
        let ones = [1.0f32; 64];
        let var = sum_lanes::<V>(n, #[inline(always)] |i, k| {
            let d = load::<V>(px.add(i), k).sub(m);
            let d = if k == V::LANES { d } else { d.mul(V::load_partial(ones.as_ptr(), k)) };
            d.mul(d)
        }) / n as f32;
        let rstd = 1.0 / (var + epsilon).sqrt();
        let (r, pg, pb, po) = (V::splat(rstd), gamma.as_ptr(), beta.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i < n {
            let k = V::LANES.min(n - i);
            let y = load::<V>(px.add(i), k).sub(m).mul(r).mul(load::<V>(pg.add(i), k)).add(load::<V>(pb.add(i), k));
            store(y, po.add(i), k);
            i += k;
        }
        (mean, rstd)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_row<V: F32x>(x: &[f32], dy: &[f32], gamma: &[f32], mean: f32, rstd: f32, dx: &mut [f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
    let (n, px, pdy, pg) = (x.len(), x.as_ptr(), dy.as_ptr(), gamma.as_ptr());
    unsafe {
        let (m, r) = (V::splat(mean), V::splat(rstd));
        let x_hat = |i: usize, k: usize| load::<V>(px.add(i), k).sub(m).mul(r);
        let g = |i: usize, k: usize| load::<V>(pdy.add(i), k).mul(load::<V>(pg.add(i), k));
        // Padding lanes: dy loads as 0 there, so both sums ignore them.
        let a = sum_lanes::<V>(n, &g) / n as f32;
        let b = sum_lanes::<V>(n, #[inline(always)] |i, k| g(i, k).mul(x_hat(i, k))) / n as f32;
        let (a, b) = (V::splat(a), V::splat(b));
        let (pdx, pdg, pdb) = (dx.as_mut_ptr(), dgamma.as_mut_ptr(), dbeta.as_mut_ptr());
        let mut i = 0;
        while i < n {
            let k = V::LANES.min(n - i);
            let (xh, d) = (x_hat(i, k), load::<V>(pdy.add(i), k));
            store(r.mul(g(i, k).sub(a).sub(xh.mul(b))), pdx.add(i), k);
            store(load::<V>(pdg.add(i), k).add(d.mul(xh)), pdg.add(i), k);
            store(load::<V>(pdb.add(i), k).add(d), pdb.add(i), k);
            i += k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> (Vec<f64>, Vec<(f64, f64)>) {
        let w = gamma.len();
        let mut out = Vec::new();
        let mut stats = Vec::new();
        for row in x.chunks_exact(w) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / w as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            out.extend(row.iter().zip(gamma).zip(beta).map(|((&v, &g), &b)| (v as f64 - mean) * rstd * g as f64 + b as f64));
            stats.push((mean, rstd));
        }
        (out, stats)
    }

    #[test]
    fn forward_and_statistics_match_a_double_precision_reference() {
        for (rows, width) in [(37, 384), (5, 21), (70, 8)] {
            let x: Vec<f32> = crate::test_values(rows * width, 1).iter().map(|v| v * 3.0 + 0.5).collect();
            let (gamma, beta) = (crate::test_values(width, 2), crate::test_values(width, 3));
            let mut out = vec![0.0; x.len()];
            let mut stats = vec![0.0; 2 * rows];
            forward(&x, &gamma, &beta, 1e-6, &mut out, Some(&mut stats));
            let (want, want_stats) = reference(&x, &gamma, &beta, 1e-6);
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!((*o as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "[{rows}, {width}] element {i}: {o} against {w}");
            }
            for (r, (mean, rstd)) in want_stats.iter().enumerate() {
                assert!((stats[2 * r] as f64 - mean).abs() <= 1e-5 && (stats[2 * r + 1] as f64 - rstd).abs() <= 1e-5 * rstd);
            }
        }
    }
}
