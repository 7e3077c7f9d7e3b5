//! One lane: the portable fallback, and the reference the vector kernels are tested against.
// Thin wrappers of intrinsics: each method is as unsafe as the trait says, no more.
#![allow(unsafe_op_in_unsafe_fn)]

use super::F32x;

#[derive(Clone, Copy)]
pub struct Scalar(f32);

impl F32x for Scalar {
    const LANES: usize = 1;

    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self(x)
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(0.0)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Self(p.read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { p.write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn load_partial(_: *const f32, _: usize) -> Self {
        Self(0.0) // n < 1 lane: nothing to load
    }
    #[inline(always)]
    unsafe fn store_partial(self, _: *mut f32, _: usize) {}
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Self(self.0 + b.0)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Self(self.0 - b.0)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Self(self.0 * b.0)
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        Self(self.0 / b.0)
    }
    #[inline(always)]
    unsafe fn sqrt(self) -> Self {
        Self(self.0.sqrt())
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // Not f32::mul_add: without FMA at compile time that is a slow software call.
        Self(self.0 * b.0 + c.0)
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        Self(self.0.max(b.0))
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        Self(self.0.min(b.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Self(self.0.round_ties_even())
    }
    #[inline(always)]
    unsafe fn select_negative(self, if_negative: Self, otherwise: Self) -> Self {
        if self.0.is_sign_negative() { if_negative } else { otherwise }
    }
    #[inline(always)]
    unsafe fn exp2_int(n: Self) -> Self {
        Self(f32::from_bits(((n.0 as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        self.0
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        self.0
    }
}
