//! A Linear layer's products over `f32` buffers: the forward `x W + b` and the three products of
//! its backward (`dx = dy W^T`, `dW = x^T dy`, `db = sum of dy's rows`).
//!
//! Operands are read in place through their strides (a transposed operand is a stride swap, not
//! a copy), products go through `gemm`, and every result is a fresh row-major buffer.

use crate::simd::{F32x, dispatch};
use crate::{elementwise, parallel};

/// A matrix read in place: element `(row, col)` at `data[offset + row * rows + col * cols]`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    /// Stride between rows, in elements.
    pub rows: isize,
    /// Stride between columns, in elements.
    pub cols: isize,
}

impl Matrix<'_> {
    /// The same values read as their transpose.
    pub fn t(self) -> Self {
        Matrix { rows: self.cols, cols: self.rows, ..self }
    }
}

/// `a [m, k] @ b [k, n]`, row-major.
pub fn product(a: Matrix, b: Matrix, m: usize, k: usize, n: usize) -> Vec<f32> {
    if m * n * k == 0 {
        return vec![0.0f32; m * n];
    }
    // Not cleared first: the parts below write every element (gemm without reading `out`).
    let mut out = Vec::<f32>::with_capacity(m * n);
    let parts = parallel::product_parts(m * n * k);
    let dst = parallel::SharedMut(out.as_mut_ptr());
    // Split the output along the larger operand: by columns when `b` is larger (each part packs
    // its own columns of `b`, and all of the smaller `a`), else by rows.
    let by_columns = m * k <= k * n;
    let (len, align) = if by_columns { (n, 16) } else { (m, 8) };
    let step = len.div_ceil(parts).div_ceil(align) * align;
    parallel::for_each_index(len.div_ceil(step), |i| {
        let (start, size) = (i * step, step.min(len - i * step));
        let (rows, cols, a_at, b_at, out_at) = if by_columns {
            (m, size, a.offset as isize, b.offset as isize + start as isize * b.cols, start)
        } else {
            (size, n, a.offset as isize + start as isize * a.rows, b.offset as isize, start * n)
        };
        // SAFETY: `a` and `b` are read within the windows their strides describe; each part writes
        // its own rows or columns of the m x n row-major `out`.
        unsafe {
            gemm::gemm(
                rows, cols, k,
                dst.at(out_at), 1, n as isize, false,
                a.data.as_ptr().offset(a_at), a.cols, a.rows,
                b.data.as_ptr().offset(b_at), b.cols, b.rows,
                0.0, 1.0, false, false, false, gemm::Parallelism::None,
            );
        }
    });
    // SAFETY: the parts wrote all m x n elements.
    unsafe { out.set_len(m * n) };
    out
}

/// `x [rows, in] @ weight [in, out] + bias`, then the exact GELU when `gelu`.
pub fn forward(x: Matrix, weight: Matrix, bias: &[f32], rows: usize, d_in: usize, gelu: bool) -> Vec<f32> {
    let mut out = product(x, weight, rows, d_in, bias.len());
    elementwise::add_bias_in_place(&mut out, bias, gelu);
    out
}

/// The sum of each column of a row-major `[rows, width]` buffer: the bias gradient.
pub fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    /// Columns per thread task: each task reads every row's slice of its columns.
    const COLUMNS: usize = 128;
    let mut sums = vec![0.0f32; width];
    if width == 0 {
        return sums;
    }
    assert_eq!(values.len() % width, 0, "column_sums: {} values in rows of {width}", values.len());
    parallel::for_each_chunk_enumerated(&mut sums, COLUMNS, |block, sums| {
        dispatch!(add_rows(values, width, block * COLUMNS, sums));
    });
    sums
}

/// `sums[j] += values[r * width + first + j]` over every row `r`.
#[inline(always)]
unsafe fn add_rows<V: F32x>(values: &[f32], width: usize, first: usize, sums: &mut [f32]) {
    let (n, out) = (sums.len(), sums.as_mut_ptr());
    for row in values.chunks_exact(width) {
        let p = row[first..first + n].as_ptr();
        let mut j = 0;
        unsafe {
            while j + V::LANES <= n {
                V::load(out.add(j)).add(V::load(p.add(j))).store(out.add(j));
                j += V::LANES;
            }
            if j < n {
                V::load_partial(out.add(j), n - j).add(V::load_partial(p.add(j), n - j)).store_partial(out.add(j), n - j);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(data: &[f32], cols: usize) -> Matrix<'_> {
        Matrix { data, offset: 0, rows: cols as isize, cols: 1 }
    }

    #[test]
    fn products_read_transposes_through_strides() {
        // a = [[1, 2, 3], [4, 5, 6]]; b = [[1, 0], [0, 1], [1, 1]].
        let (a, b) = ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(product(dense(&a, 3), dense(&b, 2), 2, 3, 2), [4.0, 5.0, 10.0, 11.0]);
        // a^T a, with a read transposed in place.
        let ata = product(dense(&a, 3).t(), dense(&a, 3), 3, 2, 3);
        assert_eq!(ata, [17.0, 22.0, 27.0, 22.0, 29.0, 36.0, 27.0, 36.0, 45.0]);
    }

    #[test]
    fn column_sums_cover_every_block_and_tail() {
        let (rows, width) = (5, 300);
        let values: Vec<f32> = (0..rows * width).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: Vec<f32> = (0..width).map(|j| (0..rows).map(|r| values[r * width + j]).sum()).collect();
        assert_eq!(column_sums(&values, width), want);
    }
}
