//! Work split over threads (rayon) where the build has them (`cfg(threads)`, see build.rs: natively, and
//! in wasm with atomics), run in turn otherwise.

#[cfg(threads)]
use rayon::prelude::*;

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

/// Blocks of rows to split a product of `m` rows and `work` multiply-adds into, one per thread
/// ([`crate::linear`]): once the product is worth threads and each gets 32 rows or more; else 1.
pub fn row_blocks(m: usize, work: usize) -> usize {
    #[cfg(threads)]
    {
        let threads = rayon::current_num_threads();
        if work >= 1 << 17 && threads > 1 && m >= 32 * threads {
            return threads;
        }
    }
    let _ = (m, work);
    1
}

/// Threads for one matrix product of `work` multiply-adds: all of them once it pays.
pub fn gemm_parallelism(work: usize) -> gemm::Parallelism {
    #[cfg(threads)]
    if work >= 1 << 17 {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = work;
    gemm::Parallelism::None
}
