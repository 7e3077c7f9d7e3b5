//! The output of the frozen bottom blocks, computed once per image (and augmented view) and kept
//! in memory as f16, so that training pays only for the blocks it updates. Saved beside the run so
//! that a resumed run does not recompute it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use half::f16;
use indicatif::ProgressBar;
use vitrine_model::Vit;

use crate::data::Sample;
use crate::evaluate::to_host;
use crate::data::loader::{Transform, epoch_order, for_each_batch};

/// `[samples, tokens, hidden]` hidden states, f16.
pub struct TokenCache {
    pub tokens: usize,
    pub hidden: usize,
    pub labels: Vec<usize>,
    values: Vec<f16>,
}

impl TokenCache {
    /// Runs embeddings and blocks `0..layers` of `model` (in inference mode) over every sample.
    /// `view` seeds the augmentation of a training transform (the same view as epoch `view` would draw).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        model: &Vit,
        layers: usize,
        samples: Arc<Vec<Sample>>,
        transform: Arc<Transform>,
        seed: u64,
        view: usize,
        batch_size: usize,
        device: &Device,
        progress: &ProgressBar,
    ) -> Result<Self> {
        let mut cache = Self { tokens: 0, hidden: 0, labels: vec![usize::MAX; samples.len()], values: Vec::new() };
        let mut per_item = 0;
        let order = epoch_order(samples.len(), None);
        for_each_batch(samples.clone(), order, batch_size, transform, (seed, view), device, progress, |pixels, labels, indices| {
            let hidden = model.forward_blocks(model.embed(pixels), 0..layers);
            let [_, tokens, width] = hidden.dims();
            if per_item == 0 {
                (cache.tokens, cache.hidden, per_item) = (tokens, width, tokens * width);
                cache.values = vec![f16::ZERO; samples.len() * per_item];
            }
            let values = to_host(hidden)?;
            for ((&index, &label), row) in indices.iter().zip(labels).zip(values.chunks_exact(per_item)) {
                let out = &mut cache.values[index * per_item..(index + 1) * per_item];
                out.iter_mut().zip(row).for_each(|(o, v)| *o = f16::from_f32(*v));
                cache.labels[index] = label;
            }
            Ok(())
        })?;
        if cache.labels.contains(&usize::MAX) {
            bail!("some images could not be read while caching features");
        }
        Ok(cache)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[indices.len(), tokens, hidden]` f32 tensor of the cached rows.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<3> {
        let per_item = self.tokens * self.hidden;
        let mut values = Vec::with_capacity(indices.len() * per_item);
        for &i in indices {
            values.extend(self.values[i * per_item..(i + 1) * per_item].iter().map(|v| v.to_f32()));
        }
        Tensor::from_data(TensorData::new(values, [indices.len(), self.tokens, self.hidden]), device)
    }

    /// One pass over the cache in its order, as [`crate::data::loader::for_each_batch`] over
    /// images: `each` gets every batch of cached rows on `device`, their labels and positions.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        device: &Device,
        progress: &ProgressBar,
        mut each: impl FnMut(Tensor<3>, &[usize], &[usize]) -> Result<()>,
    ) -> Result<()> {
        let order: Vec<usize> = (0..self.len()).collect();
        for chunk in order.chunks(batch_size.max(1)) {
            let labels: Vec<usize> = chunk.iter().map(|&i| self.labels[i]).collect();
            each(self.batch(chunk, device), &labels, chunk)?;
            progress.inc(chunk.len() as u64);
        }
        Ok(())
    }

    /// Writes the cache as a small header line then raw little-endian f16 values.
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = serde_json::json!({ "tokens": self.tokens, "hidden": self.hidden, "labels": self.labels });
        let mut bytes = format!("{header}\n").into_bytes();
        bytes.reserve(self.values.len() * 2);
        for v in &self.values {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        crate::checkpoint::write_atomic(path, &bytes)
    }

    /// Reads a cache written by [`TokenCache::save`]; `None` if the file is absent.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let split = bytes.iter().position(|&b| b == b'\n').context("cache header")?;
        let header: serde_json::Value = serde_json::from_slice(&bytes[..split])?;
        let get = |k: &str| header[k].as_u64().map(|v| v as usize).context("cache header");
        let (tokens, hidden) = (get("tokens")?, get("hidden")?);
        let labels: Vec<usize> = serde_json::from_value(header["labels"].clone())?;
        let body = &bytes[split + 1..];
        if body.len() != labels.len() * tokens * hidden * 2 {
            bail!("{} is truncated; delete it to rebuild", path.display());
        }
        let values = body.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]]))).collect();
        Ok(Some(Self { tokens, hidden, labels, values }))
    }
}
