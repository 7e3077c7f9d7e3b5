//! GELU and its derivative over whole buffers: vectorised, and split over threads.

use crate::math;
use crate::parallel;
use crate::simd::{F32x, dispatch};

/// Elements per thread task: large enough to hide the scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

/// `x <- gelu(x)` (the exact erf GELU).
pub fn gelu_in_place(x: &mut [f32]) {
    parallel::for_each_chunk(x, CHUNK, |chunk| dispatch!(gelu_chunk(chunk)));
}

/// `x <- gelu(x)` on this thread: for a short row that a kernel's epilogue has in cache.
pub(crate) fn gelu_row_in_place(x: &mut [f32]) {
    dispatch!(gelu_chunk(x));
}

/// `out <- gelu(x)`: for an input that must be kept (under autodiff), in one pass instead of a copy
/// and a pass in place.
pub fn gelu_into(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output differ in length");
    parallel::for_each_chunk_with(out, x, CHUNK, |out, x| dispatch!(gelu_copy_chunk(x, out)));
}

/// `rows[i] <- rows[i] + bias`, then GELU when `gelu`: a Linear layer's epilogue, in one pass.
pub fn add_bias_in_place(rows: &mut [f32], bias: &[f32], gelu: bool) {
    let width = bias.len();
    assert_eq!(rows.len() % width.max(1), 0, "add_bias: rows of {} values against a bias of {width}", rows.len());
    let rows_per_task = CHUNK.div_ceil(width.max(1));
    parallel::for_each_chunk(rows, rows_per_task * width.max(1), |chunk| {
        for row in chunk.chunks_exact_mut(width) {
            dispatch!(bias_row(row, bias, gelu));
        }
    });
}

/// `grad <- grad * gelu'(x)`: the backward of [`gelu_in_place`].
pub fn gelu_backward_in_place(x: &[f32], grad: &mut [f32]) {
    assert_eq!(x.len(), grad.len(), "gelu_backward: input and gradient differ in length");
    parallel::for_each_chunk_with(grad, x, CHUNK, |g, x| dispatch!(gelu_backward_chunk(x, g)));
}

#[inline(always)]
unsafe fn gelu_chunk<V: F32x>(x: &mut [f32]) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    unsafe { gelu_values::<V>(p, p, n) }
}

#[inline(always)]
unsafe fn gelu_copy_chunk<V: F32x>(x: &[f32], out: &mut [f32]) {
    unsafe { gelu_values::<V>(x.as_ptr(), out.as_mut_ptr(), x.len()) }
}

/// `dst[i] = gelu(src[i])` for `i < n`; `src` and `dst` may be the same buffer.
#[inline(always)]
unsafe fn gelu_values<V: F32x>(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    unsafe {
        while i + V::LANES <= n {
            math::gelu(V::load(src.add(i))).store(dst.add(i));
            i += V::LANES;
        }
        if i < n {
            math::gelu(V::load_partial(src.add(i), n - i)).store_partial(dst.add(i), n - i);
        }
    }
}

#[inline(always)]
unsafe fn bias_row<V: F32x>(row: &mut [f32], bias: &[f32], gelu: bool) {
    let (n, p, b) = (row.len(), row.as_mut_ptr(), bias.as_ptr());
    let epilogue = |x: V| if gelu { unsafe { math::gelu(x) } } else { x };
    let mut i = 0;
    unsafe {
        while i + V::LANES <= n {
            epilogue(V::load(p.add(i)).add(V::load(b.add(i)))).store(p.add(i));
            i += V::LANES;
        }
        if i < n {
            let x = V::load_partial(p.add(i), n - i).add(V::load_partial(b.add(i), n - i));
            epilogue(x).store_partial(p.add(i), n - i);
        }
    }
}

#[inline(always)]
unsafe fn gelu_backward_chunk<V: F32x>(x: &[f32], g: &mut [f32]) {
    let (n, px, pg) = (x.len(), x.as_ptr(), g.as_mut_ptr());
    let mut i = 0;
    unsafe {
        while i + V::LANES <= n {
            math::gelu_derivative(V::load(px.add(i))).mul(V::load(pg.add(i))).store(pg.add(i));
            i += V::LANES;
        }
        if i < n {
            let (x, g) = (V::load_partial(px.add(i), n - i), V::load_partial(pg.add(i), n - i));
            math::gelu_derivative(x).mul(g).store_partial(pg.add(i), n - i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<f32> {
        // Dense over the range where GELU bends, sparse out to where it is x or 0, plus edges.
        let mut x: Vec<f32> = (-80_000..=80_000).map(|i| i as f32 * 1e-4).collect();
        x.extend((-300..=300).map(|i| i as f32 * 0.1));
        x.extend([0.0, -0.0, 1e-30, -1e-30, f32::MIN_POSITIVE, 1e4, -1e4, 3.0e38, -3.0e38]);
        x
    }

    fn gelu_reference(x: f32) -> f64 {
        let x = x as f64;
        0.5 * x * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }

    fn gelu_derivative_reference(x: f32) -> f64 {
        let x = x as f64;
        let cdf = 0.5 * (1.0 + libm::erf(x / core::f64::consts::SQRT_2));
        cdf + x * (-0.5 * x * x).exp() / (2.0 * core::f64::consts::PI).sqrt()
    }

    #[test]
    fn gelu_is_within_1e_6_of_the_exact_function() {
        let x = inputs();
        let mut y = x.clone();
        gelu_in_place(&mut y);
        for (x, y) in x.iter().zip(&y) {
            let want = gelu_reference(*x);
            // 1e-6 absolute, relative for |y| > 1 (where one f32 ulp is already above 1e-7 |y|).
            let err = (*y as f64 - want).abs() / want.abs().max(1.0);
            assert!(err <= 1e-6, "gelu({x}) = {y}, want {want}");
        }
    }

    /// Subnormal floats make the next matrix product take the CPU's slow path (wasm has no
    /// flush-to-zero): the far negative tail is 0 instead, and nothing else is ever subnormal.
    #[test]
    fn gelu_never_gives_a_subnormal_float() {
        let x: Vec<f32> = (0..=200_000).map(|i| -(i as f32) * 1e-4 - 5.0).collect();
        let mut y = x.clone();
        gelu_in_place(&mut y);
        for (x, y) in x.iter().zip(&y) {
            assert!(!y.is_subnormal(), "gelu({x}) = {y:e} is subnormal");
            assert_eq!(*y == 0.0, *x < -13.0, "gelu({x}) = {y:e}");
        }
    }

    #[test]
    fn gelu_derivative_is_within_1e_6_of_the_exact_function() {
        let x = inputs();
        let mut g = vec![1.0; x.len()];
        gelu_backward_in_place(&x, &mut g);
        for (x, g) in x.iter().zip(&g) {
            let want = gelu_derivative_reference(*x);
            assert!((*g as f64 - want).abs() <= 1e-6, "gelu'({x}) = {g}, want {want}");
        }
    }

    #[test]
    fn bias_and_gelu_in_one_pass() {
        let (rows, width) = (37, 21);
        let x: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let bias: Vec<f32> = (0..width).map(|j| j as f32 * 0.1 - 1.0).collect();
        let mut plain = x.clone();
        add_bias_in_place(&mut plain, &bias, false);
        let mut fused = x.clone();
        add_bias_in_place(&mut fused, &bias, true);
        for i in 0..rows * width {
            let want = x[i] + bias[i % width];
            assert_eq!(plain[i], want);
            assert!((fused[i] as f64 - gelu_reference(want)).abs() <= 1e-6 * (want.abs() as f64).max(1.0));
        }
    }

    #[test]
    fn every_instruction_set_agrees_with_the_scalar_path() {
        let x = inputs();
        let mut scalar = x.clone();
        unsafe { gelu_chunk::<crate::simd::scalar::Scalar>(&mut scalar) };
        let mut runs = vec![("detected", {
            let mut v = x.clone();
            gelu_in_place(&mut v);
            v
        })];
        // AVX2 as well on an AVX-512 machine: the AVX2-only CPUs take that path.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(x: &mut [f32]) {
                unsafe { gelu_chunk::<crate::simd::x86::Avx2>(x) }
            }
            let mut v = x.clone();
            unsafe { avx2(&mut v) };
            runs.push(("avx2", v));
        }
        for (isa, vector) in runs {
            for ((x, s), v) in x.iter().zip(&scalar).zip(&vector) {
                assert!((s - v).abs() <= 1e-6 * s.abs().max(1.0), "gelu({x}): scalar {s}, {isa} {v}");
            }
        }
    }
}
