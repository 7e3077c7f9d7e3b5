//! f32 values as little-endian bytes, the layout of safetensors and of the training caches.

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn bytes(values: &[f32]) -> Vec<u8> {
    bytes_of(values.iter().map(|v| v.to_le_bytes()))
}

/// The values' bytes (each value's little-endian bytes from `values`), written into one
/// allocation of the right size (collecting a `flat_map` of each value's bytes grows the vector as
/// it goes, several times slower on a model's weights).
pub fn bytes_of<const N: usize>(values: impl ExactSizeIterator<Item = [u8; N]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&v);
    }
    out
}
