//! Vectorised `exp` and `erf`, accurate to a few ulp in f32 (bounds in the tests).

use crate::simd::F32x;

/// `e^x`: Cody-Waite range reduction to `r` in [-ln2/2, ln2/2] and Cephes' degree-6 polynomial.
/// Inputs below -87.3 give the smallest normal float instead of 0.
#[inline(always)]
pub unsafe fn exp<V: F32x>(x: V) -> V {
    unsafe {
        let x = x.max(V::splat(-87.33654)).min(V::splat(88.37626));
        let n = x.mul(V::splat(core::f32::consts::LOG2_E)).round();
        let r = n.mul_add(V::splat(-0.693_359_4), x);
        let r = n.mul_add(V::splat(2.121_944_4e-4), r);
        let mut p = V::splat(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = p.mul_add(r, V::splat(c));
        }
        let p = p.mul_add(r.mul(r), r).add(V::splat(1.0));
        p.mul(V::exp2_int(n))
    }
}

/// The standard normal CDF `Phi(x) = erfc(-x / sqrt 2) / 2`, from Numerical Recipes' `erfcc`
/// (relative error below 1.2e-7 over the whole line), so that the far negative tail keeps its
/// relative accuracy instead of cancelling in `1 + erf`.
#[inline(always)]
pub unsafe fn normal_cdf<V: F32x>(x: V) -> V {
    const C: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    unsafe {
        let z = x.max(V::zero().sub(x)).mul(V::splat(core::f32::consts::FRAC_1_SQRT_2));
        let t = V::splat(1.0).div(z.mul_add(V::splat(0.5), V::splat(1.0)));
        let mut p = V::splat(C[0]);
        for c in &C[1..] {
            p = p.mul_add(t, V::splat(*c));
        }
        // erfc(z) / 2 for z = |x| / sqrt 2
        let half_erfc = t.mul(exp(p.sub(z.mul(z)))).mul(V::splat(0.5));
        x.select_negative(half_erfc, V::splat(1.0).sub(half_erfc))
    }
}

/// The exact (erf) GELU: `x Phi(x)`.
#[inline(always)]
pub unsafe fn gelu<V: F32x>(x: V) -> V {
    // Below x = -13, |x Phi(x)| < 8e-38 falls to subnormal floats, which the next matrix product would
    // multiply on the CPU's slow path (no flush-to-zero in wasm): the output is 0 there instead.
    const SUBNORMAL_BELOW: f32 = -13.0;
    unsafe { x.sub(V::splat(SUBNORMAL_BELOW)).select_negative(V::zero(), x.mul(normal_cdf(x))) }
}

/// `d gelu / dx = Phi(x) + x phi(x)`, with phi the normal density.
#[inline(always)]
pub unsafe fn gelu_derivative<V: F32x>(x: V) -> V {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    unsafe {
        // Beyond |x| = 10, x phi(x) is below 1e-21: clamping keeps x * x finite.
        let xc = x.max(V::splat(-10.0)).min(V::splat(10.0));
        let pdf = exp(xc.mul(xc).mul(V::splat(-0.5))).mul(V::splat(FRAC_1_SQRT_2PI));
        xc.mul_add(pdf, normal_cdf(x))
    }
}
