//! How weights are stored on disk: f32, f16, or int8 with one f32 scale per output channel.
//!
//! int8 applies to the Linear weights of the encoder blocks (query, key, value, attention output,
//! MLP), symmetric per output channel: `w[o, i] ~= q[o, i] * scale[o]` with `q` in -127..=127.
//! `<name>` is stored as I8 `[out, in]` and `<name>_scale` as F32 `[out]`; norms, biases, embeddings
//! and the classifier stay f32; the file is about 4x smaller. `load_safetensors` rebuilds f32
//! weights, so every backend runs the same model; `load_bundle_for_inference` keeps the stored
//! integers as they are for the int8 products, where the device and CPU have them.

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

/// Suffix of the scale tensor that goes with an int8 weight.
pub const SCALE_SUFFIX: &str = "_scale";

/// Storage scheme of a bundle's `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    F32,
    F16,
    /// Block Linear weights in int8, per output channel.
    Int8,
}

impl Storage {
    /// The `quantization` entry written into `config.json` (none for f32).
    pub fn config_entry(self) -> Option<serde_json::Value> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(serde_json::json!({ "method": "vitrine", "weights": "f16" })),
            Self::Int8 => Some(serde_json::json!({
                "method": "vitrine",
                "weights": "int8",
                "granularity": "per_output_channel",
                "symmetric": true,
                "scale_suffix": SCALE_SUFFIX,
                "modules": "encoder Linear weights (query, key, value, attention output, MLP)",
            })),
        }
    }
}

impl Storage {
    /// The scheme a `config.json` records under `quantization` (f32 when it records none).
    pub fn recorded(entry: Option<&serde_json::Value>) -> Self {
        match entry.and_then(|e| e.get("weights")).and_then(|w| w.as_str()) {
            Some("int8") => Self::Int8,
            Some("f16") => Self::F16,
            _ => Self::F32,
        }
    }
}

/// Whether the canonical parameter `name` is int8 under [`Storage::Int8`].
pub fn is_quantized_weight(canonical: &str) -> bool {
    canonical.starts_with("vit.encoder.layer.")
        && ["attention.query.weight", "attention.key.weight", "attention.value.weight", "output.dense.weight", "intermediate.dense.weight"]
            .iter()
            .any(|s| canonical.ends_with(s))
}

/// Symmetric per-row int8 of a row-major `[rows, cols]` matrix: the values and one scale per row.
pub fn quantize_rows(values: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let cols = values.len() / rows.max(1);
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(cols.max(1)) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        q.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// Little-endian f32 bytes of an int8 `[rows, cols]` matrix times its per-row scales.
pub fn dequantize_rows(q: &[u8], scales: &[f32]) -> Vec<u8> {
    let cols = q.len() / scales.len().max(1);
    let scale_of = |i: usize| scales[i / cols.max(1)];
    super::le::bytes_of(q.iter().enumerate().map(|(i, &v)| (f32::from(v as i8) * scale_of(i)).to_le_bytes()))
}

/// Little-endian bytes of `values` as `dtype` (F32 or F16).
pub fn float_bytes(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => super::le::bytes_of(values.iter().map(|v| half::f16::from_f32(*v).to_le_bytes())),
        _ => super::le::bytes(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_scheme_is_read_back() {
        for storage in [Storage::F32, Storage::F16, Storage::Int8] {
            assert_eq!(Storage::recorded(storage.config_entry().as_ref()), storage);
        }
    }

    #[test]
    fn int8_rows_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013).collect();
        let (q, scales) = quantize_rows(&values, 4);
        let bytes: Vec<u8> = q.iter().map(|v| *v as u8).collect();
        let back: Vec<f32> = dequantize_rows(&bytes, &scales).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        for (row, (v, b)) in values.chunks(16).zip(back.chunks(16)).enumerate() {
            for (x, y) in v.iter().zip(b) {
                assert!((x - y).abs() <= scales[row] / 2.0 + 1e-7);
            }
        }
        assert!(q.iter().any(|v| v.abs() == 127));
    }

    #[test]
    fn only_block_linear_weights_are_quantized() {
        assert!(is_quantized_weight("vit.encoder.layer.3.attention.attention.query.weight"));
        assert!(is_quantized_weight("vit.encoder.layer.0.output.dense.weight"));
        assert!(is_quantized_weight("vit.encoder.layer.0.attention.output.dense.weight"));
        assert!(!is_quantized_weight("vit.encoder.layer.0.output.dense.bias"));
        assert!(!is_quantized_weight("classifier.weight"));
        assert!(!is_quantized_weight("vit.embeddings.patch_embeddings.projection.weight"));
    }
}
