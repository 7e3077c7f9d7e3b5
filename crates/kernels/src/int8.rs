//! Integer matrix products for int8 Linear layers: `x [rows, in] (f32) @ w [in, out] (i8, one f32
//! scale per output column)`, accumulated in i32.
//!
//! Activations are quantized per row, symmetrically (`max |x| / 127`), when the product starts
//! (dynamic quantization, as onnxruntime's `quantize_dynamic` does per tensor). Each weight is
//! packed once into the layout of the instruction set ([`Packed`]), then:
//! - AVX-512 VNNI: `vpdpbusd`, 64 u8 x i8 products per instruction. Activations become u8 by
//!   adding 128; the 128 x column sums that this adds are taken off in the epilogue.
//! - AVX2: `vpmaddwd` on values widened to i16, 16 products per instruction, exact (the u8 x i8
//!   `vpmaddubsw` would saturate its i16 pair sums at full 8-bit range).
//! - wasm relaxed SIMD: `i32x4.relaxed_dot_i8x16_i7x16_add_s`, 16 products per instruction, in the
//!   build that has relaxed SIMD. Its second operand has 7 bits (0..=127, or the result is the
//!   browser's choice): the weights are halved to -63..=63 (their scale doubled) and stored + 64; the
//!   64 x row sums of the activations that this adds are taken off in the epilogue.
//! - wasm simd128: `i32x4.dot_i16x8_s` on i16 pairs, 8 products per instruction (the AVX2 scheme
//!   at half the width; the browser compiles it to `pmaddwd`).
//! - elsewhere: [`available`] is false and the layer keeps f32 weights.
//!
//! The epilogue (scales, bias, GELU) runs on each tile while it is in cache.
// Without an integer kernel, nothing past `available` runs.
#![cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code, unused_variables))]

use core::mem::MaybeUninit;

use crate::elementwise;
#[cfg(threads)]
use rayon::prelude::*;

/// Rows of one register micro-tile: each packed weight vector loaded is used this many times (6
/// rows x 4 vectors of sums fill 24 of AVX-512's 32 registers; AVX2's and simd128's 6 x 2 fill 12
/// of 16). AMX's micro-tile has [`AMX_ROWS`].
const ROWS: usize = 6;
/// Rows of one AMX micro-tile: two tiles of 16 rows, so that each weight tile loaded serves 32 rows.
const AMX_ROWS: usize = 32;
/// Most rows per thread task (a multiple of both tile heights): a task's quantized rows stay in
/// L1 while each weight block passes.
const MAX_TASK_ROWS: usize = 96;

/// One micro-tile's sums: up to [`AMX_ROWS`] rows of a 64-column block (the register kernels fill
/// the first [`ROWS`]).
type Acc = [[i32; 64]; AMX_ROWS];

/// The integer instruction set of this CPU, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Isa {
    /// AMX's `tdpbusd` on 16 x 64-byte tiles (Intel Xeon from Sapphire Rapids), with AVX-512
    /// around it; the VNNI layout of weights.
    Amx,
    Vnni512,
    Avx2,
    /// wasm relaxed SIMD's 8-bit dot product, on 7-bit weights (the build with the `relaxed-simd` feature).
    RelaxedSimd,
    /// wasm simd128, which every browser with WebAssembly SIMD has (the build requires it).
    Simd128,
    None,
}

impl Int8Isa {
    /// The fastest kernel of [`Int8Isa::on_this_cpu`] that the environment allows, chosen once:
    /// VITRINE_NO_INT8 keeps int8 bundles on f32 products, VITRINE_NO_AVX512 takes the AVX2 kernel
    /// and VITRINE_NO_AMX the VNNI one (to compare them).
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Int8Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let off = |name: &str| std::env::var_os(name).is_some();
            if off("VITRINE_NO_INT8") {
                return Int8Isa::None;
            }
            let allowed = |isa: &Int8Isa| match isa {
                Int8Isa::Amx => !off("VITRINE_NO_AMX") && !off("VITRINE_NO_AVX512"),
                Int8Isa::Vnni512 => !off("VITRINE_NO_AVX512"),
                _ => true,
            };
            Self::on_this_cpu().into_iter().find(allowed).unwrap_or(Int8Isa::None)
        })
    }

    /// Every integer kernel this CPU (and OS) runs, fastest first.
    fn on_this_cpu() -> Vec<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni");
            let kernels = [(avx512 && x86::amx_int8(), Int8Isa::Amx), (avx512, Int8Isa::Vnni512), (is_x86_feature_detected!("avx2"), Int8Isa::Avx2)];
            kernels.into_iter().filter_map(|(runs, isa)| runs.then_some(isa)).collect()
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return if cfg!(feature = "relaxed-simd") { vec![Int8Isa::RelaxedSimd, Int8Isa::Simd128] } else { vec![Int8Isa::Simd128] };
        #[cfg(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))))]
        Vec::new()
    }

    /// Products summed per 32-bit lane: 4 for `vpdpbusd`, `tdpbusd` and the relaxed dot, 2 for
    /// `vpmaddwd`.
    fn group(self) -> usize {
        match self {
            Int8Isa::Amx | Int8Isa::Vnni512 | Int8Isa::RelaxedSimd => 4,
            _ => 2,
        }
    }

    /// Output columns of one packed block.
    fn block(self) -> usize {
        match self {
            Int8Isa::Amx | Int8Isa::Vnni512 => 64,
            Int8Isa::Simd128 | Int8Isa::RelaxedSimd => 8,
            _ => 16,
        }
    }

    /// Quantized values per activation row for `d_in` inputs: whole groups, and whole 64-byte
    /// tile rows for AMX (zero weights meet the padding).
    fn depth(self, d_in: usize) -> usize {
        let align = if self == Int8Isa::Amx { 64 } else { self.group() };
        d_in.div_ceil(align) * align
    }

    /// Rows of one micro-tile.
    fn tile_rows(self) -> usize {
        if self == Int8Isa::Amx { AMX_ROWS } else { ROWS }
    }

    /// How the kernel reads quantized activations.
    fn activations(self) -> Encoding {
        match self {
            Int8Isa::Amx | Int8Isa::Vnni512 => Encoding::Unsigned,
            Int8Isa::RelaxedSimd => Encoding::Signed,
            _ => Encoding::Wide,
        }
    }

    /// Whether packing halves the weights to 7 bits (the relaxed dot's second operand).
    fn seven_bit_weights(self) -> bool {
        self == Int8Isa::RelaxedSimd
    }

    /// What packing adds to each weight (the relaxed dot's operand must not be negative).
    fn weight_offset(self) -> i32 {
        if self.seven_bit_weights() { 64 } else { 0 }
    }

    /// The step of a packed weight in units of the bundle's: 2 for halved weights.
    fn weight_step(self) -> f32 {
        if self.seven_bit_weights() { 2.0 } else { 1.0 }
    }
}

/// Quantized activations as a kernel reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// i8 + 128, one byte each (`vpdpbusd`, `tdpbusd`: unsigned x signed).
    Unsigned,
    /// i8, one byte each (the relaxed dot: signed x 7-bit).
    Signed,
    /// i8 widened to little-endian i16 (`vpmaddwd`, `i32x4.dot_i16x8_s`).
    Wide,
}

impl Encoding {
    /// What the encoding adds to each activation.
    fn offset(self) -> i32 {
        if self == Encoding::Unsigned { 128 } else { 0 }
    }

    /// Quantized values `q` into `out`, in this encoding.
    #[inline(always)]
    fn write(self, q: &[i32], out: &mut [u8]) {
        match self {
            Encoding::Unsigned => out.iter_mut().zip(q).for_each(|(a, &v)| *a = (v + 128) as u8),
            Encoding::Signed => out.iter_mut().zip(q).for_each(|(a, &v)| *a = v as i8 as u8),
            Encoding::Wide => out.chunks_exact_mut(2).zip(q).for_each(|(a, &v)| a.copy_from_slice(&(v as i16).to_le_bytes())),
        }
    }
}

/// A weight of int8's -127..=127 in the relaxed dot's 7 bits: halved, ties to even, within
/// -63..=63 (its column's scale doubles).
fn seven_bits(w: i8) -> i8 {
    (f32::from(w) / 2.0).round_ties_even().clamp(-63.0, 63.0) as i8
}

/// Whether this CPU computes int8 products faster than f32 ones here.
pub fn available() -> bool {
    Int8Isa::detect() != Int8Isa::None
}

/// Symmetric int8 of `values` (`[rows, cols]` row-major) with one scale per row: `max |x| / 127`,
/// rounded to the nearest (ties to even, as the vector instructions round).
pub fn quantize_rows(values: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i32; cols];
    let mut out = Vec::with_capacity(values.len());
    let scales = values
        .chunks_exact(cols.max(1))
        .map(|row| {
            let scale = quantize_row(row, &mut q);
            out.extend(q.iter().map(|&v| v as i8));
            scale
        })
        .collect();
    (out, scales)
}

/// Symmetric int8 of a weight `w` (`[d_in, d_out]` row-major) with one scale per output column,
/// `max |w| / 127`, rounded half away from zero, as int8 bundles store their weights.
pub fn quantize_columns(w: &[f32], d_out: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0f32; d_out];
    for row in w.chunks_exact(d_out.max(1)) {
        scales.iter_mut().zip(row).for_each(|(s, v)| *s = s.max(v.abs()));
    }
    scales.iter_mut().for_each(|s| *s = if *s > 0.0 { *s / 127.0 } else { 1.0 });
    let q = w.iter().zip(scales.iter().cycle()).map(|(v, s)| (v / s).round().clamp(-127.0, 127.0) as i8).collect();
    (q, scales)
}

/// A row's scale, `max |x| / 127` (1 for a row of zeros), and its inverse, from `peaks`: values
/// whose largest magnitude is the row's. A NaN is passed over.
#[inline(always)]
fn row_scale<'a>(peaks: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
    let peak = peaks.into_iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
    (scale, 1.0 / scale)
}

/// One activation times its row's `inverse` scale, rounded half to even into -127..=127; a NaN
/// becomes -127.
#[inline(always)]
fn quantize_value(v: f32, inverse: f32) -> i32 {
    // `max` then `min` turn a NaN into -127 (each returns its other operand for a NaN); `clamp`
    // would keep the NaN.
    #[allow(clippy::manual_clamp)]
    let v = (v * inverse).round_ties_even().max(-127.0).min(127.0);
    // SAFETY: `v` is an integer in [-127, 127], never NaN (a plain `as` converts lane by lane).
    unsafe { v.to_int_unchecked::<i32>() }
}

/// One row of [`quantize_rows`] into `q` (as i32, for the callers' widths); returns its scale.
#[inline(always)]
fn quantize_row(row: &[f32], q: &mut [i32]) -> f32 {
    // The peak over 16 lanes at a time (a plain fold is one ordered chain, which does not vectorise).
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(m, v)| *m = m.max(v.abs()));
    }
    let (scale, inverse) = row_scale(chunks.remainder().iter().chain(&lanes));
    q.iter_mut().zip(row).for_each(|(o, &v)| *o = quantize_value(v, inverse));
    scale
}

/// One row of [`quantize_row`] into `out` in `encoding`; returns its scale and, when `with_sum`,
/// the sum of its values (else 0). `q` is scratch, grown to the row's length when needed.
#[inline(always)]
fn encode_row(x: &[f32], out: &mut [u8], encoding: Encoding, with_sum: bool, q: &mut Vec<i32>) -> (f32, i32) {
    // In wasm, explicit simd128: the code below does not vectorise there (3.7x slower).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if encoding != Encoding::Unsigned {
        let (scale, sum) = wasm::quantize_row(x, out, encoding);
        return (scale, if with_sum { sum } else { 0 });
    }
    q.resize(x.len(), 0);
    let scale = quantize_row(x, q);
    encoding.write(q, out);
    (scale, if with_sum { q.iter().sum() } else { 0 })
}

/// `x [rows, d_in] @ (w * scales per column) + bias`, then the exact GELU when `gelu`, with `w`
/// the `[d_in, d_out]` weight [`Packed::new`] packed.
///
/// # Panics
/// If the lengths disagree.
pub fn forward(x: &[f32], rows: usize, w: &Packed, scales: &[f32], bias: &[f32], gelu: bool) -> Vec<f32> {
    let (d_in, d_out) = (w.d_in, w.d_out);
    assert_eq!(x.len(), rows * d_in, "int8 linear: input of {} values for {rows} rows of {d_in}", x.len());
    assert_eq!(scales.len(), d_out, "int8 linear: {} scales for {d_out} outputs", scales.len());
    assert_eq!(bias.len(), d_out, "int8 linear: a bias of {} for {d_out} outputs", bias.len());
    if rows == 0 || d_out == 0 {
        return Vec::new();
    }
    // Not zeroed first: the tiles write every value once (zeroing took about 5 % of an int8
    // forward pass, on one thread, before the parallel section).
    let mut out = Vec::with_capacity(rows * d_out);
    let tile = Tile { x, packed: w, col_scales: scales, bias, gelu };
    // About two tasks per thread, in whole micro-tiles.
    #[cfg(threads)]
    let threads = rayon::current_num_threads();
    #[cfg(not(threads))]
    let threads = 1;
    let tile_rows = w.isa.tile_rows();
    let task_rows = (rows.div_ceil(2 * threads).div_ceil(tile_rows) * tile_rows).min(MAX_TASK_ROWS);
    let task = |(index, out): (usize, &mut [MaybeUninit<f32>])| tile.rows_into(index * task_rows, out);
    let cells = &mut out.spare_capacity_mut()[..rows * d_out];
    #[cfg(threads)]
    cells.par_chunks_mut(task_rows * d_out).enumerate().for_each(task);
    #[cfg(not(threads))]
    cells.chunks_mut(task_rows * d_out).enumerate().for_each(task);
    // SAFETY: `Tile::store` wrote each of the `rows * d_out` values: every row of every task, in
    // blocks of columns that together cover `d_out`.
    unsafe { out.set_len(rows * d_out) };
    out
}

/// A weight in the order of this CPU's integer kernel: per block of columns, per group of input
/// rows, the block's columns each with its group of values (zero-padded), and what each column
/// takes off its sums. Packing reads the weight once; a layer's packing is kept and reused
/// ([`crate::quantize_linear`]).
pub struct Packed {
    values: Vec<i8>,
    /// `offset * sum_k w[k, c]`, taken off each sum: what the activations' offset (128 for VNNI) adds.
    column_offsets: Vec<i32>,
    /// Bytes of one block.
    stride: usize,
    d_in: usize,
    d_out: usize,
    isa: Int8Isa,
}

impl Packed {
    /// Packs `w`, `[d_in, d_out]` row-major.
    ///
    /// # Panics
    /// If [`available`] is false or `w` is not `d_in * d_out` values.
    pub fn new(w: &[i8], d_in: usize, d_out: usize) -> Self {
        Self::for_isa(w, d_in, d_out, Int8Isa::detect())
    }

    /// [`Packed::new`] for the kernel of `isa`, which this CPU must have.
    fn for_isa(w: &[i8], d_in: usize, d_out: usize, isa: Int8Isa) -> Self {
        assert_ne!(isa, Int8Isa::None, "int8 linear: no integer kernel for this CPU");
        assert_eq!(w.len(), d_in * d_out, "int8 linear: weight of {} values for [{d_in}, {d_out}]", w.len());
        let (group, block) = (isa.group(), isa.block());
        let groups = isa.depth(d_in) / group;
        let blocks = d_out.div_ceil(block);
        let stride = groups * block * group;
        let mut values = vec![0i8; blocks * stride];
        let mut column_offsets = vec![0i32; blocks * block];
        let (halved, weight_offset, activation_offset) = (isa.seven_bit_weights(), isa.weight_offset(), isa.activations().offset());
        let pack = |(b, (values, offsets)): (usize, (&mut [i8], &mut [i32]))| {
            let c0 = b * block;
            let width = block.min(d_out - c0);
            for k in 0..d_in {
                let row = &w[k * d_out + c0..][..width];
                let (g, t) = (k / group, k % group);
                let out = &mut values[g * block * group..][..block * group];
                for (j, &v) in row.iter().enumerate() {
                    let v = if halved { seven_bits(v) } else { v };
                    out[j * group + t] = (i32::from(v) + weight_offset) as i8;
                    offsets[j] += activation_offset * i32::from(v);
                }
            }
        };
        #[cfg(threads)]
        values.par_chunks_mut(stride).zip(column_offsets.par_chunks_mut(block)).enumerate().for_each(pack);
        #[cfg(not(threads))]
        values.chunks_mut(stride).zip(column_offsets.chunks_mut(block)).enumerate().for_each(pack);
        Self { values, column_offsets, stride, d_in, d_out, isa }
    }
}

impl Packed {
    /// Quantized values per activation row ([`Int8Isa::depth`]).
    fn depth(&self) -> usize {
        self.isa.depth(self.d_in)
    }
}

/// What every task reads.
struct Tile<'a> {
    /// `[rows, d_in]` f32 activations.
    x: &'a [f32],
    packed: &'a Packed,
    col_scales: &'a [f32],
    bias: &'a [f32],
    gelu: bool,
}

/// One task's rows, quantized ([`Encoding`]: u8 for AMX and VNNI, i8 for the relaxed dot,
/// little-endian i16 for AVX2 and simd128), padded to whole tiles and groups, each row's scale, and
/// what the weights' offset adds to each row's sums (`offset * sum_k q[r, k]`).
struct Activations {
    bytes: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
}

impl Tile<'_> {
    /// Rows `first..` into `out` (whole rows of `d_out`), compiled whole for the instruction set
    /// (the quantization and the epilogue vectorise with it).
    fn rows_into(&self, first: usize, out: &mut [MaybeUninit<f32>]) {
        match self.packed.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() saw AVX-512F, BW and VNNI, AMX-INT8, and the kernel's leave to use tiles.
            Int8Isa::Amx => unsafe { x86::rows_amx(self, first, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() saw AVX-512F, BW and VNNI.
            Int8Isa::Vnni512 => unsafe { x86::rows_vnni512(self, first, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: detect() saw AVX2.
            Int8Isa::Avx2 => unsafe { x86::rows_avx2(self, first, out) },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Int8Isa::Simd128 => self.rows_with(first, out, wasm::tile_simd128),
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", feature = "relaxed-simd"))]
            // SAFETY: this build is only loaded where the browser validated relaxed SIMD (www/worker.js).
            Int8Isa::RelaxedSimd => self.rows_with(first, out, |a, depth, w, r0, acc| unsafe { wasm::tile_relaxed(a, depth, w, r0, acc) }),
            // Natively, the tests check the relaxed dot's packing and epilogue on its scalar model.
            #[cfg(all(test, not(target_arch = "wasm32")))]
            Int8Isa::RelaxedSimd => self.rows_with(first, out, tests::tile_relaxed_scalar),
            _ => unreachable!("int8 products without an integer kernel"),
        }
    }

    /// [`Tile::rows_into`]'s body, `tile` the instruction set's micro-kernel.
    #[inline(always)]
    fn rows_with(&self, first: usize, out: &mut [MaybeUninit<f32>], tile: impl Fn(&[u8], usize, &[i8], usize, &mut Acc)) {
        let rows = out.len() / self.packed.d_out;
        let a = self.quantize(&self.x[first * self.packed.d_in..(first + rows) * self.packed.d_in], rows);
        let blocks = self.packed.d_out.div_ceil(self.packed.isa.block());
        let mut acc = [[0i32; 64]; AMX_ROWS];
        // Each weight block (depth x 64 bytes) stays in L1 while every tile of rows passes over it.
        for b in 0..blocks {
            for r0 in (0..rows).step_by(self.packed.isa.tile_rows()) {
                tile(&a.bytes, self.packed.depth(), &self.packed.values[b * self.packed.stride..], r0, &mut acc);
                self.store(&acc, &a, r0, rows, b, out);
            }
        }
    }

    #[inline(always)]
    fn quantize(&self, x: &[f32], rows: usize) -> Activations {
        let tile_rows = self.packed.isa.tile_rows();
        let padded = rows.div_ceil(tile_rows) * tile_rows;
        let mut scales = vec![0f32; rows];
        let mut offsets = vec![0i32; rows];
        let mut q = Vec::new();
        let encoding = self.packed.isa.activations();
        let weight_offset = self.packed.isa.weight_offset();
        let width = if encoding == Encoding::Wide { 2 * self.packed.depth() } else { self.packed.depth() };
        let mut bytes = vec![encoding.offset() as u8; padded * width];
        for (((x, out), scale), offset) in x.chunks_exact(self.packed.d_in).zip(bytes.chunks_exact_mut(width)).zip(&mut scales).zip(&mut offsets) {
            let sum;
            (*scale, sum) = encode_row(x, out, encoding, weight_offset != 0, &mut q);
            *offset = weight_offset * sum;
        }
        Activations { bytes, scales, offsets }
    }

    /// `out[r, c] = (acc - column_offset - row_offset) * row_scale * weight_step * col_scale + bias`,
    /// then GELU when asked, for the tile's real cells (rows `r0..` of the task's `rows`).
    #[inline(always)]
    fn store(&self, acc: &Acc, a: &Activations, r0: usize, rows: usize, b: usize, out: &mut [MaybeUninit<f32>]) {
        let block = self.packed.isa.block();
        let c0 = b * block;
        let width = block.min(self.packed.d_out - c0);
        let offsets = &self.packed.column_offsets[c0..c0 + width];
        let col_scales = &self.col_scales[c0..c0 + width];
        let bias = &self.bias[c0..c0 + width];
        for (i, acc) in acc.iter().enumerate().take(rows.saturating_sub(r0).min(self.packed.isa.tile_rows())) {
            let r = r0 + i;
            let row = &mut out[r * self.packed.d_out + c0..][..width];
            let (scale, row_offset) = (a.scales[r] * self.packed.isa.weight_step(), a.offsets[r]);
            // In wasm, a whole block's row in explicit simd128 (the loop below stays scalar there).
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            let done = width == 8 && {
                wasm::store_row(row, acc, offsets, row_offset, scale, col_scales, bias);
                true
            };
            #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
            let done = false;
            if !done {
                for ((((o, &acc), &offset), &col), &b) in row.iter_mut().zip(acc).zip(offsets).zip(col_scales).zip(bias) {
                    o.write((acc - offset - row_offset) as f32 * scale * col + b);
                }
            }
            if self.gelu {
                // SAFETY: each value of `row` was written just above.
                elementwise::gelu_row_in_place(unsafe { &mut *(row as *mut [MaybeUninit<f32>] as *mut [f32]) });
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::asm;
    use core::arch::x86_64::*;

    use super::{AMX_ROWS, Acc, MaybeUninit, ROWS, Tile};

    /// Whether this CPU has AMX-INT8 and the OS lets this process use its tiles.
    pub(super) fn amx_int8() -> bool {
        let leaf7 = __cpuid_count(7, 0);
        let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        tile && int8 && tile_data_permitted()
    }

    /// Linux hands AMX's 8 KB of tile state only to a process that asks for it, once, for all its
    /// threads (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without it `tdpbusd` faults.
    #[cfg(target_os = "linux")]
    fn tile_data_permitted() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission; it changes no memory.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn tile_data_permitted() -> bool {
        false
    }

    /// `ldtilecfg`'s operand: palette 1, tiles 0-7 each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const TILES: TileConfig = {
        let mut config = [0u8; 64];
        config[0] = 1;
        let mut t = 0;
        while t < 8 {
            config[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            config[48 + t] = 16;
            t += 1;
        }
        TileConfig(config)
    };

    /// The tile registers' shape is state of the calling thread: set for this task, released after.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn rows_amx(t: &Tile, first: usize, out: &mut [MaybeUninit<f32>]) {
        // SAFETY: the caller checked AMX and the permission; the configuration is 64 aligned bytes.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) TILES.0.as_ptr(), options(nostack, readonly)) };
        t.rows_with(first, out, |a, depth, w, r0, acc| unsafe { tile_amx(a, depth, w, r0, acc) });
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn rows_vnni512(t: &Tile, first: usize, out: &mut [MaybeUninit<f32>]) {
        t.rows_with(first, out, |a, depth, w, r0, acc| unsafe { tile_vnni512(a, depth, w, r0, acc) });
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(t: &Tile, first: usize, out: &mut [MaybeUninit<f32>]) {
        t.rows_with(first, out, |a, depth, w, r0, acc| unsafe { tile_avx2(a, depth, w, r0, acc) });
    }

    /// `acc[i][j] = sum_k a[r0 + i, k] w[k, j]` over one packed block with AMX: 32 rows x 64
    /// columns, as two halves of 32 columns, each summed in tiles 0-3 (rows 0-15 and 16-31 x
    /// columns 0-15 and 16-31 of the half). Per 64 inputs, tiles 4 and 5 hold the two row tiles'
    /// values and 6 and 7 the weights' (16 groups of 4 inputs x 16 columns, read from the VNNI
    /// layout with a stride of one group, 256 bytes), so each tile loaded serves two products.
    /// `depth` is a multiple of 64.
    #[inline]
    unsafe fn tile_amx(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        debug_assert!(depth.is_multiple_of(64) && a.len() >= (r0 + AMX_ROWS) * depth && w.len() >= depth * 64);
        // SAFETY: every tile read stays inside `a` (32 rows of `depth` from r0) and `w` (the
        // block's depth / 4 groups of 256 bytes), every store inside `acc` (32 rows of 256 bytes).
        unsafe {
            let a = a.as_ptr().add(r0 * depth);
            for half in 0..2 {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                for step in 0..depth / 64 {
                    asm!(
                        "tileloadd tmm4, [{a} + {a_stride}]",
                        "tileloadd tmm6, [{w} + {w_stride}]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a2} + {a_stride}]",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tileloadd tmm7, [{w} + {w_stride} + 64]",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a = in(reg) a.add(64 * step),
                        a2 = in(reg) a.add(16 * depth + 64 * step),
                        a_stride = in(reg) depth,
                        w = in(reg) w.as_ptr().add(step * 16 * 256 + half * 128),
                        w_stride = in(reg) 256usize,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{c} + {stride}], tmm0",
                    "tilestored [{c} + {stride} + 64], tmm1",
                    "tilestored [{c2} + {stride}], tmm2",
                    "tilestored [{c2} + {stride} + 64], tmm3",
                    c = in(reg) acc.as_mut_ptr().cast::<u8>().add(half * 128),
                    c2 = in(reg) acc[16..].as_mut_ptr().cast::<u8>().add(half * 128),
                    stride = in(reg) 256usize,
                    options(nostack),
                );
            }
        }
    }

    /// `acc[i][j] = sum_k a[r0 + i, k] w[k, j]` over one packed block with `vpdpbusd`: 6 rows x 4
    /// vectors of 16 columns. `a` holds u8 rows of `depth` values, `w` the block (from its start).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile_vnni512(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        let groups = depth / 4;
        debug_assert!(a.len() >= (r0 + ROWS) * depth && w.len() >= groups * 256);
        let (w, a) = (w.as_ptr(), unsafe { a.as_ptr().add(r0 * depth) });
        let mut sums = [[_mm512_setzero_si512(); 4]; ROWS];
        for g in 0..groups {
            unsafe {
                let wg = w.add(g * 256);
                let wv = [
                    _mm512_loadu_si512(wg.cast()),
                    _mm512_loadu_si512(wg.add(64).cast()),
                    _mm512_loadu_si512(wg.add(128).cast()),
                    _mm512_loadu_si512(wg.add(192).cast()),
                ];
                for (i, sums) in sums.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(a.add(i * depth + 4 * g).cast::<i32>().read_unaligned());
                    for v in 0..4 {
                        sums[v] = _mm512_dpbusd_epi32(sums[v], x, wv[v]);
                    }
                }
            }
        }
        for (acc, sums) in acc.iter_mut().zip(&sums) {
            for (v, s) in sums.iter().enumerate() {
                unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(16 * v).cast(), *s) };
            }
        }
    }

    /// The same with `vpmaddwd` on i16 pairs: 6 rows x 2 vectors of 8 columns. `a` holds rows of
    /// `depth` little-endian i16 values.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_avx2(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        let pairs = depth / 2;
        debug_assert!(a.len() >= (r0 + ROWS) * 2 * depth && w.len() >= pairs * 32);
        let (w, a) = (w.as_ptr(), unsafe { a.as_ptr().add(r0 * 2 * depth) });
        let mut sums = [[_mm256_setzero_si256(); 2]; ROWS];
        for p in 0..pairs {
            unsafe {
                let wp = w.add(p * 32);
                let wv = [
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16).cast())),
                ];
                for (i, sums) in sums.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(a.add(2 * (i * depth + 2 * p)).cast::<i32>().read_unaligned());
                    for v in 0..2 {
                        sums[v] = _mm256_add_epi32(sums[v], _mm256_madd_epi16(x, wv[v]));
                    }
                }
            }
        }
        for (acc, sums) in acc.iter_mut().zip(&sums) {
            for (v, s) in sums.iter().enumerate() {
                unsafe { _mm256_storeu_si256(acc.as_mut_ptr().add(8 * v).cast(), *s) };
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use core::arch::wasm32::*;

    use super::{Acc, Encoding, MaybeUninit, ROWS, quantize_value, row_scale};

    /// `acc[i][j] = sum_k a[r0 + i, k] w[k, j]` over one packed block with `i32x4.dot_i16x8_s`: 6
    /// rows x 2 vectors of 4 columns. `a` holds rows of `depth` little-endian i16 values, `w` the
    /// block (from its start): per pair of inputs, 8 columns of 2 i8 values.
    #[inline]
    pub(super) fn tile_simd128(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        let pairs = depth / 2;
        assert!(a.len() >= (r0 + ROWS) * 2 * depth && w.len() >= pairs * 16, "int8 tile out of bounds");
        let (w, a) = (w.as_ptr(), a[r0 * 2 * depth..].as_ptr());
        let mut sums = [[i32x4_splat(0); 2]; ROWS];
        for p in 0..pairs {
            // SAFETY: the assert above keeps every read inside `a` and `w`.
            unsafe {
                let wp = w.add(p * 16);
                let wv = [i16x8_load_extend_i8x8(wp), i16x8_load_extend_i8x8(wp.add(8))];
                for (i, sums) in sums.iter_mut().enumerate() {
                    let x = i32x4_splat(a.add(2 * (i * depth + 2 * p)).cast::<i32>().read_unaligned());
                    for v in 0..2 {
                        sums[v] = i32x4_add(sums[v], i32x4_dot_i16x8(x, wv[v]));
                    }
                }
            }
        }
        store(&sums, acc);
    }

    /// The same with relaxed SIMD's `i32x4.relaxed_dot_i8x16_i7x16_add_s`: 6 rows x 2 vectors of 4
    /// columns. `a` holds rows of `depth` i8 values, `w` the block: per group of 4 inputs, 8 columns
    /// of 4 values in 1..=127 (7-bit weights + 64). Compiled with relaxed SIMD whatever the crate's
    /// flags, so that only this build's products use it.
    #[cfg(feature = "relaxed-simd")]
    #[target_feature(enable = "relaxed-simd")]
    pub(super) unsafe fn tile_relaxed(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        let groups = depth / 4;
        assert!(a.len() >= (r0 + ROWS) * depth && w.len() >= groups * 32, "int8 tile out of bounds");
        let (w, a) = (w.as_ptr(), a[r0 * depth..].as_ptr());
        let mut sums = [[i32x4_splat(0); 2]; ROWS];
        for g in 0..groups {
            // SAFETY: the assert above keeps every read inside `a` and `w`.
            unsafe {
                let wp = w.add(g * 32);
                let wv = [v128_load(wp.cast()), v128_load(wp.add(16).cast())];
                for (i, sums) in sums.iter_mut().enumerate() {
                    let x = i32x4_splat(a.add(i * depth + 4 * g).cast::<i32>().read_unaligned());
                    for v in 0..2 {
                        sums[v] = i32x4_relaxed_dot_i8x16_i7x16_add(x, wv[v], sums[v]);
                    }
                }
            }
        }
        store(&sums, acc);
    }

    /// [`super::quantize_row`] and the encoding of its values into `out` (`Signed` or `Wide`), in
    /// one pass of simd128, which the scalar code does not vectorise to: the same scale and bytes,
    /// and the sum of the values.
    pub(super) fn quantize_row(row: &[f32], out: &mut [u8], encoding: Encoding) -> (f32, i32) {
        let wide = encoding == Encoding::Wide;
        assert!(wide || encoding == Encoding::Signed, "int8: no simd128 quantization to {encoding:?}");
        let width = if wide { 2 } else { 1 };
        assert!(out.len() >= width * row.len(), "int8: {} bytes for a row of {}", out.len(), row.len());
        let chunks = row.len() / 16;
        let (tail, p) = (&row[16 * chunks..], row.as_ptr());
        // SAFETY: only called with i < 4 * chunks, 4 values each, inside `row`.
        let load = |i: usize| unsafe { v128_load(p.add(4 * i).cast()) };
        let mut peaks = f32x4_splat(0.0);
        // Compare and select: a NaN is passed over, as the scalar `max` does.
        let keep_larger = |m: v128, v: v128| v128_bitselect(v, m, f32x4_gt(v, m));
        for i in 0..4 * chunks {
            peaks = keep_larger(peaks, f32x4_abs(load(i)));
        }
        let lanes = [f32x4_extract_lane::<0>(peaks), f32x4_extract_lane::<1>(peaks), f32x4_extract_lane::<2>(peaks), f32x4_extract_lane::<3>(peaks)];
        let (scale, inverse) = row_scale(tail.iter().chain(&lanes));
        let (low, high, inv) = (f32x4_splat(-127.0), f32x4_splat(127.0), f32x4_splat(inverse));
        // Clamped by compare and select, so that a NaN becomes -127, as in `quantize_value`.
        let quantize = |v: v128| {
            let v = f32x4_nearest(f32x4_mul(v, inv));
            let v = v128_bitselect(v, low, f32x4_ge(v, low));
            i32x4_trunc_sat_f32x4(v128_bitselect(v, high, f32x4_le(v, high)))
        };
        let mut sums = i32x4_splat(0);
        for c in 0..chunks {
            let q = [quantize(load(4 * c)), quantize(load(4 * c + 1)), quantize(load(4 * c + 2)), quantize(load(4 * c + 3))];
            sums = i32x4_add(i32x4_add(sums, i32x4_add(q[0], q[1])), i32x4_add(q[2], q[3]));
            let (a, b) = (i16x8_narrow_i32x4(q[0], q[1]), i16x8_narrow_i32x4(q[2], q[3]));
            // SAFETY: `out` holds `width` bytes for each value of `row` (the assert above).
            unsafe {
                let o = out.as_mut_ptr().add(16 * width * c);
                if wide {
                    v128_store(o.cast(), a);
                    v128_store(o.add(16).cast(), b);
                } else {
                    v128_store(o.cast(), i8x16_narrow_i16x8(a, b));
                }
            }
        }
        // The last 0-15 values, in scalar code.
        let mut q = [0i32; 16];
        let q = &mut q[..tail.len()];
        q.iter_mut().zip(tail).for_each(|(o, &v)| *o = quantize_value(v, inverse));
        encoding.write(q, &mut out[16 * width * chunks..]);
        let lanes = [i32x4_extract_lane::<0>(sums), i32x4_extract_lane::<1>(sums), i32x4_extract_lane::<2>(sums), i32x4_extract_lane::<3>(sums)];
        (scale, lanes.iter().chain(&*q).sum())
    }

    /// One row of a whole 8-column block of [`super::Tile::store`]: the same arithmetic, in order.
    #[inline(always)]
    pub(super) fn store_row(row: &mut [MaybeUninit<f32>], acc: &[i32; 64], offsets: &[i32], row_offset: i32, scale: f32, col_scales: &[f32], bias: &[f32]) {
        assert!(row.len() == 8 && offsets.len() == 8 && col_scales.len() == 8 && bias.len() == 8);
        let (scale, row_offset) = (f32x4_splat(scale), i32x4_splat(row_offset));
        for v in 0..2 {
            // SAFETY: 4 lanes at 4 * v of slices of 8 (the assert above).
            unsafe {
                let load = |p: *const i32| v128_load(p.add(4 * v).cast());
                let sums = i32x4_sub(i32x4_sub(load(acc.as_ptr()), load(offsets.as_ptr())), row_offset);
                let scaled = f32x4_mul(f32x4_mul(f32x4_convert_i32x4(sums), scale), load(col_scales.as_ptr().cast()));
                v128_store(row.as_mut_ptr().add(4 * v).cast(), f32x4_add(scaled, load(bias.as_ptr().cast())));
            }
        }
    }

    /// A micro-tile's sums into the first 8 columns of its rows of `acc`.
    #[inline(always)]
    fn store(sums: &[[v128; 2]; ROWS], acc: &mut Acc) {
        for (acc, sums) in acc.iter_mut().zip(sums) {
            for (v, s) in sums.iter().enumerate() {
                // SAFETY: 4 lanes at 4 * v, inside the row of 64.
                unsafe { v128_store(acc.as_mut_ptr().add(4 * v).cast(), *s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`wasm::tile_relaxed`] in scalar code: the same packed bytes, the same sums.
    pub(super) fn tile_relaxed_scalar(a: &[u8], depth: usize, w: &[i8], r0: usize, acc: &mut Acc) {
        for (i, acc) in acc.iter_mut().enumerate().take(ROWS) {
            for (j, sum) in acc.iter_mut().enumerate().take(8) {
                *sum = (0..depth).map(|k| i32::from(a[(r0 + i) * depth + k] as i8) * i32::from(w[(k / 4) * 32 + j * 4 + k % 4])).sum();
            }
        }
    }

    /// The same integer product, computed plainly (then the GELU checked in `elementwise`, when
    /// `gelu`): the kernels must give exactly this.
    fn reference(x: &[f32], rows: usize, w: &[i8], scales: &[f32], bias: &[f32], gelu: bool) -> Vec<f32> {
        let d_out = scales.len();
        let d_in = x.len() / rows;
        let (q, row_scales) = quantize_rows(x, d_in);
        let mut out = vec![0f32; rows * d_out];
        for r in 0..rows {
            for c in 0..d_out {
                let acc: i32 = (0..d_in).map(|k| i32::from(q[r * d_in + k]) * i32::from(w[k * d_out + c])).sum();
                out[r * d_out + c] = acc as f32 * row_scales[r] * scales[c] + bias[c];
            }
        }
        if gelu {
            elementwise::gelu_in_place(&mut out);
        }
        out
    }

    #[test]
    fn integer_products_match_the_plain_reference_on_odd_shapes() {
        // Every kernel this CPU runs, not only the one detect() picks.
        let kernels = Int8Isa::on_this_cpu();
        if kernels.is_empty() {
            eprintln!("no integer kernel on this CPU: nothing to check");
            return;
        }
        // Rows, inputs and outputs that leave every tail: partial tiles, groups, blocks, tasks.
        // Odd and even cases alternate the fused GELU.
        let shapes = [(1, 3, 5), (5, 7, 17), (37, 64, 70), (197, 384, 1536), (66, 1536, 384), (3, 130, 129)];
        for (case, (rows, d_in, d_out)) in shapes.into_iter().enumerate() {
            let gelu = case % 2 == 1;
            let x = crate::test_values(rows * d_in, 1);
            let (w, scales) = quantize_columns(&crate::test_values(d_in * d_out, 2), d_out);
            let bias = crate::test_values(d_out, 3);
            let want = reference(&x, rows, &w, &scales, &bias, gelu);
            for &isa in &kernels {
                let got = forward(&x, rows, &Packed::for_isa(&w, d_in, d_out, isa), &scales, &bias, gelu);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
                // The same integers and operations, in the same order.
                assert!(worst <= 1e-6, "{isa:?}, {rows}x{d_in}x{d_out}, gelu {gelu}: {worst}");
            }
        }
        eprintln!("checked: {kernels:?}");
    }

    #[test]
    fn the_relaxed_dot_packing_gives_the_product_of_seven_bit_weights() {
        // Its wasm tile runs in the browser only (the page's relaxed-SIMD build, tests/e2e); here its
        // scalar model checks the packing (halved weights + 64), the row offsets and the epilogue.
        for (case, (rows, d_in, d_out)) in [(1, 3, 5), (5, 7, 17), (37, 64, 70), (13, 130, 129)].into_iter().enumerate() {
            let gelu = case % 2 == 1;
            let x = crate::test_values(rows * d_in, 1);
            let (w, scales) = quantize_columns(&crate::test_values(d_in * d_out, 2), d_out);
            let bias = crate::test_values(d_out, 3);
            let halved: Vec<i8> = w.iter().map(|&v| seven_bits(v)).collect();
            let doubled: Vec<f32> = scales.iter().map(|s| s * 2.0).collect();
            let want = reference(&x, rows, &halved, &doubled, &bias, gelu);
            let got = forward(&x, rows, &Packed::for_isa(&w, d_in, d_out, Int8Isa::RelaxedSimd), &scales, &bias, gelu);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
            assert!(worst <= 1e-6, "{rows}x{d_in}x{d_out}, gelu {gelu}: {worst}");
        }
        assert_eq!([127, 126, 125, 3, 1, -1, -127].map(seven_bits), [63, 63, 62, 2, 0, 0, -63]);
    }

    #[test]
    fn rows_quantize_to_their_peak_and_a_nan_stays_in_range() {
        let (q, scales) = quantize_rows(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 3);
        assert_eq!((q, scales), (vec![64, -127, 32, 0, 0, 0], vec![1.0 / 127.0, 1.0]));
        let (q, _) = quantize_rows(&[f32::NAN, 1.0, -2.0], 3);
        assert_eq!(q, [-127, 64, -127]);
    }

    #[test]
    fn the_int8_product_stays_near_the_f32_one() {
        if !available() {
            return;
        }
        let (rows, d_in, d_out) = (197, 384, 384);
        let x = crate::test_values(rows * d_in, 4);
        let w = crate::test_values(d_in * d_out, 5);
        let (q, scales) = quantize_columns(&w, d_out);
        let got = forward(&x, rows, &Packed::new(&q, d_in, d_out), &scales, &vec![0.0; d_out], false);
        let mut rms = (0f64, 0f64);
        for r in 0..rows {
            for c in 0..d_out {
                let exact: f32 = (0..d_in).map(|k| x[r * d_in + k] * w[k * d_out + c]).sum();
                rms.0 += f64::from(got[r * d_out + c] - exact).powi(2);
                rms.1 += f64::from(exact).powi(2);
            }
        }
        // Two 8-bit roundings of uniform values: about 1 % of the output's scale.
        let relative = (rms.0 / rms.1).sqrt();
        assert!(relative < 0.02, "relative RMS error {relative}");
    }
}
