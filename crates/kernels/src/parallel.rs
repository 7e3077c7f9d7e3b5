//! Work split over threads (rayon) where the build has them (`cfg(threads)`, see build.rs: natively, and
//! in wasm with atomics), run in turn otherwise.

#[cfg(threads)]
use rayon::prelude::*;

/// `f()`, work on `device`: on a thread of rayon's pool when that is the flex CPU backend (at once
/// when already on one), else here. A whole forward pass or training step run this way splits each
/// CPU kernel's work from inside the pool: handing every operation in from outside cost a wake-up
/// and a sleep of the calling thread per operation, a fifth of the time of a small model's forward
/// pass (`docs/performance.md`, "Running on the pool"). GPU backends keep the caller's thread.
pub fn on_pool<R: Send>(device: &burn::tensor::Device, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(threads)]
    if crate::runs_on_flex(device) {
        return rayon::scope(|_| f());
    }
    let _ = device;
    f()
}

/// `f` on each `chunk`-sized piece of `data`.
pub fn for_each_chunk(data: &mut [f32], chunk: usize, f: impl Fn(&mut [f32]) + Send + Sync) {
    #[cfg(threads)]
    data.par_chunks_mut(chunk).for_each(f);
    #[cfg(not(threads))]
    data.chunks_mut(chunk).for_each(f);
}

/// `f` on each `chunk`-sized piece of `data` beside the same piece of `other`.
pub fn for_each_chunk_with(data: &mut [f32], other: &[f32], chunk: usize, f: impl Fn(&mut [f32], &[f32]) + Send + Sync) {
    #[cfg(threads)]
    data.par_chunks_mut(chunk).zip(other.par_chunks(chunk)).for_each(|(a, b)| f(a, b));
    #[cfg(not(threads))]
    data.chunks_mut(chunk).zip(other.chunks(chunk)).for_each(|(a, b)| f(a, b));
}

/// `f(i, piece)` on each `chunk`-sized piece of `data`, the `i`-th.
pub fn for_each_chunk_enumerated(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Send + Sync) {
    #[cfg(threads)]
    data.par_chunks_mut(chunk).enumerate().for_each(|(i, piece)| f(i, piece));
    #[cfg(not(threads))]
    data.chunks_mut(chunk).enumerate().for_each(|(i, piece)| f(i, piece));
}

/// `f(i)` for `i` in `0..n`.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Send + Sync) {
    #[cfg(threads)]
    (0..n).into_par_iter().for_each(f);
    #[cfg(not(threads))]
    (0..n).for_each(f);
}

/// How many single-threaded products one product of `work` multiply-adds splits into.
pub fn product_parts(work: usize) -> usize {
    #[cfg(threads)]
    if work >= 1 << 17 {
        return rayon::current_num_threads();
    }
    let _ = work;
    1
}

/// A buffer's pointer, for tasks that each write their own part of it.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32);
// SAFETY: users write disjoint parts of the buffer.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
