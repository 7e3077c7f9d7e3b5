//! One vector type per instruction set, behind one trait, so that each kernel is written once.
//!
//! A kernel is a generic `#[inline(always)]` function over [`F32x`]; [`dispatch!`] instantiates it
//! inside a `#[target_feature]` wrapper for the best instruction set this CPU has (detected once,
//! at run time: one binary serves AVX-512 and AVX2 machines), or, in wasm, for simd128.

#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub mod wasm;
pub mod scalar;

/// A vector of `f32` lanes. Every method is `#[inline(always)]` in its impls, so that it compiles
/// with the instruction set of the `#[target_feature]` function it is inlined into.
///
/// # Safety
/// Implementations are only used where their instruction set is present ([`dispatch!`] checks);
/// pointer arguments must be valid for the lanes read or written. This covers every method.
#[allow(clippy::missing_safety_doc)]
pub trait F32x: Copy {
    const LANES: usize;

    unsafe fn splat(x: f32) -> Self;
    unsafe fn zero() -> Self;
    /// Unaligned load of `LANES` values.
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// Loads the first `n < LANES` values, the other lanes zero.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self;
    /// Stores the first `n < LANES` lanes.
    unsafe fn store_partial(self, p: *mut f32, n: usize);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    unsafe fn div(self, b: Self) -> Self;
    /// Correctly rounded, as IEEE 754 asks of every instruction set.
    unsafe fn sqrt(self) -> Self;
    /// `self * b + c`: one fused instruction where the instruction set has it.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    unsafe fn min(self, b: Self) -> Self;
    /// Round to the nearest integer (ties to even).
    unsafe fn round(self) -> Self;
    /// Per lane: `if_negative` where `self`'s sign bit is set (including -0.0), else `otherwise`.
    unsafe fn select_negative(self, if_negative: Self, otherwise: Self) -> Self;
    /// `2^n` for integral `n` in [-126, 127].
    unsafe fn exp2_int(n: Self) -> Self;
    unsafe fn reduce_sum(self) -> f32;
    unsafe fn reduce_max(self) -> f32;
}

/// The instruction sets vitrine's kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F (16 lanes).
    Avx512,
    /// x86-64 with AVX2 and FMA (8 lanes).
    Avx2,
    /// wasm32 with simd128 (4 lanes, no fused multiply-add).
    Simd128,
    /// Anything else (1 lane).
    Scalar,
}

impl Isa {
    /// The best instruction set this CPU has, detected once.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            *ISA.get_or_init(|| {
                if std::env::var_os("VITRINE_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f") {
                    Isa::Avx512
                } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Isa::Avx2
                } else {
                    Isa::Scalar
                }
            })
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            Isa::Simd128
        }
        #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
        {
            Isa::Scalar
        }
    }
}

/// Calls `$kernel::<V>(args..)` with the vector type of the detected instruction set, inside a
/// function compiled for that instruction set.
///
/// `$kernel` must be a leaf: `#[inline(always)]` and free of closures handed to other functions
/// (rayon's included), since a closure is compiled on its own, without the instruction set, and
/// its intrinsics then become calls. Split work over threads outside, dispatch inside each task.
macro_rules! dispatch {
    ($kernel:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_imports)]
        use $crate::simd::{Isa, F32x};
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn run<F: FnOnce() -> R, R>(f: F) -> R { f() }
                // SAFETY: detect() saw AVX-512F on this CPU.
                unsafe { run(#[inline(always)] || $kernel::<$crate::simd::x86::Avx512>($($arg),*)) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run<F: FnOnce() -> R, R>(f: F) -> R { f() }
                // SAFETY: detect() saw AVX2 and FMA on this CPU.
                unsafe { run(#[inline(always)] || $kernel::<$crate::simd::x86::Avx2>($($arg),*)) }
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Isa::Simd128 => unsafe { $kernel::<$crate::simd::wasm::Simd128>($($arg),*) },
            _ => unsafe { $kernel::<$crate::simd::scalar::Scalar>($($arg),*) },
        }
    }};
}
pub(crate) use dispatch;
