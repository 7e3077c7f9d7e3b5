//! Scaled dot-product attention for short sequences (a ViT's few hundred tokens), fused.
//!
//! Per (batch, head) task: `S = Q K^T` by one matrix product reading Q and K in place (any
//! strides: the heads of a projection output need no copy), then scale + softmax over each row
//! (vectorised `exp`), then `O = P V`, written straight into a `[batch, tokens, heads, head_dim]`
//! buffer, so that merging the heads afterwards is a free reshape.

use crate::math;
use crate::parallel;
use crate::simd::{F32x, dispatch};

/// A `[batch, heads, tokens, dim]` operand: its buffer and the stride of each axis, in elements.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [isize; 4],
}

impl Operand<'_> {
    fn ptr(&self, batch: usize, head: usize) -> *const f32 {
        let offset = self.offset as isize + batch as isize * self.strides[0] + head as isize * self.strides[1];
        // SAFETY: the caller's layout keeps every element of the operand inside `data`.
        unsafe { self.data.as_ptr().offset(offset) }
    }
}

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_tokens: usize,
    pub kv_tokens: usize,
    pub dim: usize,
    pub value_dim: usize,
}

/// `softmax(Q K^T scale) V` into `out` (with `v`), laid out `[batch, q_tokens, heads, value_dim]`.
/// With `probs`, the probabilities are written there, laid out `[batch, heads, q, kv]`.
pub fn attention(
    q: Operand,
    k: Operand,
    v: Option<Operand>,
    dims: Dims,
    scale: f32,
    out: Option<&mut [f32]>,
    probs: Option<&mut [f32]>,
) {
    let Dims { batch, heads, q_tokens, kv_tokens, dim, value_dim } = dims;
    let out_ptr = out.map(|out| {
        assert_eq!(out.len(), batch * q_tokens * heads * value_dim, "attention: output size");
        SendPtr(out.as_mut_ptr())
    });
    let probs_ptr = probs.map(|p| {
        assert_eq!(p.len(), batch * heads * q_tokens * kv_tokens, "attention: probabilities size");
        SendPtr(p.as_mut_ptr())
    });
    let task = |index: usize| {
        let (b, h) = (index / heads, index % heads);
        let mut scratch;
        let scores: &mut [f32] = match probs_ptr {
            // SAFETY: each task writes its own (batch, head) block of the probabilities.
            Some(p) => unsafe { core::slice::from_raw_parts_mut(p.at(index * q_tokens * kv_tokens), q_tokens * kv_tokens) },
            None => {
                scratch = vec![0.0f32; q_tokens * kv_tokens];
                &mut scratch
            }
        };
        let (qp, kp) = (q.ptr(b, h), k.ptr(b, h));
        // S = Q K^T: a [q, dim] by [dim, kv] product (K^T read through K's strides).
        // SAFETY (both products): operands are read within their layouts; each task writes its
        // own scores and its own (batch, head) rows of the output.
        unsafe {
            product(q_tokens, kv_tokens, dim, scores.as_mut_ptr(), kv_tokens as isize, (qp, q.strides[3], q.strides[2]), (kp, k.strides[2], k.strides[3]));
        }
        for row in scores.chunks_exact_mut(kv_tokens) {
            dispatch!(scaled_softmax(row, scale));
        }
        let (Some(out_ptr), Some(v)) = (out_ptr, v) else { return };
        let (o, vp) = (unsafe { out_ptr.at((b * q_tokens * heads + h) * value_dim) }, v.ptr(b, h));
        // O = P V: [q, kv] by [kv, value_dim], rows of O `heads * value_dim` apart.
        unsafe {
            product(q_tokens, value_dim, kv_tokens, o, (heads * value_dim) as isize, (scores.as_ptr(), 1, kv_tokens as isize), (vp, v.strides[3], v.strides[2]));
        }
    };
    parallel::for_each_index(batch * heads, task);
}

/// The gradients of [`attention`] from the output's (`grad`, `[batch, heads, q, value_dim]`), given
/// the probabilities of the forward (`probs`, `[batch, heads, q, kv]`): `(dq, dk, dv)`, each laid out
/// `[batch, tokens, heads, dim]` as the forward's output is.
///
/// Per (batch, head): `dP = dO V^T`, `dS = P (dP - rowsum(P dP)) scale` (the softmax's backward,
/// in place), `dV = P^T dO`, `dQ = dS K`, `dK = dS^T Q`: five products reading every operand in place.
pub fn attention_backward(
    q: Operand,
    k: Operand,
    v: Operand,
    probs: &[f32],
    grad: Operand,
    dims: Dims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { batch, heads, q_tokens, kv_tokens, dim, value_dim } = dims;
    assert_eq!(probs.len(), batch * heads * q_tokens * kv_tokens, "attention backward: probabilities size");
    let mut dq = vec![0.0f32; batch * q_tokens * heads * dim];
    let mut dk = vec![0.0f32; batch * kv_tokens * heads * dim];
    let mut dv = vec![0.0f32; batch * kv_tokens * heads * value_dim];
    let (dq_ptr, dk_ptr, dv_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let task = |index: usize| {
        let (b, h) = (index / heads, index % heads);
        let p_block = &probs[index * q_tokens * kv_tokens..(index + 1) * q_tokens * kv_tokens];
        let p = p_block.as_ptr();
        let (qp, kp, vp, gp) = (q.ptr(b, h), k.ptr(b, h), v.ptr(b, h), grad.ptr(b, h));
        let mut ds = vec![0.0f32; q_tokens * kv_tokens];
        let kv = kv_tokens as isize;
        // SAFETY (both blocks): operands are read within their layouts; each task writes its own
        // scratch and its own (batch, head) rows of dq, dk and dv (rows `heads * dim` apart).
        unsafe {
            product(q_tokens, kv_tokens, value_dim, ds.as_mut_ptr(), kv, (gp, grad.strides[3], grad.strides[2]), (vp, v.strides[2], v.strides[3]));
        }
        for (row, p_row) in ds.chunks_exact_mut(kv_tokens).zip(p_block.chunks_exact(kv_tokens)) {
            dispatch!(softmax_backward_row(p_row, row, scale));
        }
        unsafe {
            let rows_of = |heads_width: usize| (heads * heads_width) as isize;
            let dv_at = dv_ptr.at((b * kv_tokens * heads + h) * value_dim);
            product(kv_tokens, value_dim, q_tokens, dv_at, rows_of(value_dim), (p, kv, 1), (gp, grad.strides[3], grad.strides[2]));
            let dq_at = dq_ptr.at((b * q_tokens * heads + h) * dim);
            product(q_tokens, dim, kv_tokens, dq_at, rows_of(dim), (ds.as_ptr(), 1, kv), (kp, k.strides[3], k.strides[2]));
            let dk_at = dk_ptr.at((b * kv_tokens * heads + h) * dim);
            product(kv_tokens, dim, q_tokens, dk_at, rows_of(dim), (ds.as_ptr(), kv, 1), (qp, q.strides[3], q.strides[2]));
        }
    };
    parallel::for_each_index(batch * heads, task);
    (dq, dk, dv)
}

/// `dst [m, n] = lhs [m, k] @ rhs [k, n]` on one thread, each operand given as (pointer, column
/// stride, row stride), `dst`'s rows `dst_rows` apart.
///
/// # Safety
/// Every operand's strides keep its reads (and `dst`'s writes) inside its buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn product(m: usize, n: usize, k: usize, dst: *mut f32, dst_rows: isize, lhs: (*const f32, isize, isize), rhs: (*const f32, isize, isize)) {
    unsafe {
        gemm::gemm(
            m, n, k,
            dst, 1, dst_rows, false,
            lhs.0, lhs.1, lhs.2,
            rhs.0, rhs.1, rhs.2,
            0.0, 1.0, false, false, false, gemm::Parallelism::None,
        );
    }
}

/// `dp <- p (dp - sum(p dp)) scale`: one row of the scaled softmax's backward.
#[inline(always)]
unsafe fn softmax_backward_row<V: F32x>(p: &[f32], dp: &mut [f32], scale: f32) {
    let (n, pp, pd) = (p.len(), p.as_ptr(), dp.as_mut_ptr());
    let full = n - n % V::LANES;
    unsafe {
        let mut dot = V::zero();
        for i in (0..full).step_by(V::LANES) {
            dot = V::load(pp.add(i)).mul_add(V::load(pd.add(i)), dot);
        }
        let mut dot = dot.reduce_sum();
        for i in full..n {
            dot += *pp.add(i) * *pd.add(i);
        }
        let (dot_v, scale_v) = (V::splat(dot), V::splat(scale));
        for i in (0..full).step_by(V::LANES) {
            V::load(pp.add(i)).mul(V::load(pd.add(i)).sub(dot_v)).mul(scale_v).store(pd.add(i));
        }
        for i in full..n {
            *pd.add(i) = *pp.add(i) * (*pd.add(i) - dot) * scale;
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint parts of the buffer behind the pointer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` in (a method, so that closures capture the whole `SendPtr`).
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// `row <- softmax(row * scale)`, in one read for the maximum and one for `exp` and the sum.
#[inline(always)]
pub(crate) unsafe fn scaled_softmax<V: F32x>(row: &mut [f32], scale: f32) {
    let (n, p) = (row.len(), row.as_mut_ptr());
    let full = n - n % V::LANES;
    unsafe {
        let mut max = V::splat(f32::NEG_INFINITY);
        for i in (0..full).step_by(V::LANES) {
            max = max.max(V::load(p.add(i)));
        }
        let mut max = max.reduce_max();
        for i in full..n {
            max = max.max(*p.add(i));
        }
        let (scale_v, shift) = (V::splat(scale), V::splat(-max * scale));
        let mut sum = V::zero();
        for i in (0..full).step_by(V::LANES) {
            let e = math::exp(V::load(p.add(i)).mul_add(scale_v, shift));
            e.store(p.add(i));
            sum = sum.add(e);
        }
        let mut sum = sum.reduce_sum();
        for i in full..n {
            let e = math::exp(crate::simd::scalar::Scalar::splat(*p.add(i) * scale - max * scale)).reduce_sum();
            *p.add(i) = e;
            sum += e;
        }
        let inv = V::splat(1.0 / sum);
        for i in (0..full).step_by(V::LANES) {
            V::load(p.add(i)).mul(inv).store(p.add(i));
        }
        for i in full..n {
            *p.add(i) *= 1.0 / sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_float64_reference_with_strided_heads() {
        // Q, K and V as views into one [batch, tokens, 3, heads, dim] projection output.
        let (batch, heads, tokens, dim) = (2, 3, 37, 8);
        let qkv = crate::test_values(batch * tokens * 3 * heads * dim, 7);
        let strides = [(tokens * 3 * heads * dim) as isize, dim as isize, (3 * heads * dim) as isize, 1];
        let operand = |which: usize| Operand { data: &qkv, offset: which * heads * dim, strides };
        let dims = Dims { batch, heads, q_tokens: tokens, kv_tokens: tokens, dim, value_dim: dim };
        let scale = 1.0 / (dim as f32).sqrt();
        let mut out = vec![0.0; batch * tokens * heads * dim];
        let mut probs = vec![0.0; batch * heads * tokens * tokens];
        attention(operand(0), operand(1), Some(operand(2)), dims, scale, Some(&mut out), Some(&mut probs));
        let at = |which: usize, b: usize, h: usize, t: usize, d: usize| {
            qkv[b * tokens * 3 * heads * dim + t * 3 * heads * dim + which * heads * dim + h * dim + d] as f64
        };
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..tokens {
                    let s: Vec<f64> =
                        (0..tokens).map(|j| (0..dim).map(|d| at(0, b, h, i, d) * at(1, b, h, j, d)).sum::<f64>() * scale as f64).collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for j in 0..tokens {
                        let got = probs[((b * heads + h) * tokens + i) * tokens + j] as f64;
                        assert!((got - e[j] / total).abs() < 1e-6, "p[{b},{h},{i},{j}]");
                    }
                    for d in 0..dim {
                        let want: f64 = (0..tokens).map(|j| e[j] / total * at(2, b, h, j, d)).sum();
                        let got = out[((b * tokens + i) * heads + h) * dim + d] as f64;
                        assert!((got - want).abs() < 1e-5, "o[{b},{i},{h},{d}]: {got} vs {want}");
                    }
                }
            }
        }
    }
}
