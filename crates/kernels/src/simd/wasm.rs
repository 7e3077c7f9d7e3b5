//! WebAssembly simd128 (4 lanes). It has no fused multiply-add: `mul_add` is a multiply and an add.
// Thin wrappers of intrinsics: each method is as unsafe as the trait says, no more.
#![allow(unsafe_op_in_unsafe_fn)]

use core::arch::wasm32::*;

use super::F32x;

#[derive(Clone, Copy)]
pub struct Simd128(v128);

impl F32x for Simd128 {
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self(f32x4_splat(x))
    }
    #[inline(always)]
    unsafe fn zero() -> Self {
        Self(f32x4_splat(0.0))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Self(v128_load(p as *const v128)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { v128_store(p as *mut v128, self.0) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let mut lanes = [0.0f32; 4];
        unsafe { core::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), n) };
        unsafe { Self::load(lanes.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        let mut lanes = [0.0f32; 4];
        unsafe { self.store(lanes.as_mut_ptr()) };
        unsafe { core::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n) };
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Self(f32x4_add(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        Self(f32x4_sub(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        Self(f32x4_mul(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn div(self, b: Self) -> Self {
        Self(f32x4_div(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sqrt(self) -> Self {
        Self(f32x4_sqrt(self.0))
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Self(f32x4_add(f32x4_mul(self.0, b.0), c.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        Self(f32x4_pmax(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        Self(f32x4_pmin(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Self(f32x4_nearest(self.0))
    }
    #[inline(always)]
    unsafe fn select_negative(self, if_negative: Self, otherwise: Self) -> Self {
        Self(v128_bitselect(if_negative.0, otherwise.0, i32x4_shr(self.0, 31)))
    }
    #[inline(always)]
    unsafe fn exp2_int(n: Self) -> Self {
        Self(i32x4_shl(i32x4_add(i32x4_trunc_sat_f32x4(n.0), i32x4_splat(127)), 23))
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        f32x4_extract_lane::<0>(self.0)
            + f32x4_extract_lane::<1>(self.0)
            + f32x4_extract_lane::<2>(self.0)
            + f32x4_extract_lane::<3>(self.0)
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let a = f32x4_extract_lane::<0>(self.0).max(f32x4_extract_lane::<1>(self.0));
        let b = f32x4_extract_lane::<2>(self.0).max(f32x4_extract_lane::<3>(self.0));
        a.max(b)
    }
}
