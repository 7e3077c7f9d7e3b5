//! Batches made on worker threads: a producer thread walks the epoch's order and decodes and
//! transforms each batch's images in parallel (rayon) while the model works on the previous one.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use vitrine_model::PreprocessConfig;

use super::Sample;
use super::augment::Augment;
use super::image_file::read_image;

/// How images become pixels.
#[derive(Debug, Clone)]
pub enum Transform {
    /// The model's own preprocessing (resize, centre crop, normalise): evaluation.
    Eval(PreprocessConfig),
    /// A random augmented `size` x `size` view, normalised like `PreprocessConfig`: training.
    Train { augment: Augment, size: u32, normalize: PreprocessConfig },
}

impl Transform {
    /// A training transform that normalises as `preprocess` does.
    pub fn train(augment: Augment, size: u32, preprocess: &PreprocessConfig) -> Self {
        let normalize = PreprocessConfig { resize: None, crop: None, ..preprocess.clone() };
        Self::Train { augment, size, normalize }
    }

    /// The `[3, h, w]` values of one decoded image and `[h, w]`; `rng_seed` drives the augmentation.
    pub fn pixels(&self, image: &RgbImage, rng_seed: u64) -> Result<(Vec<f32>, [usize; 2]), String> {
        match self {
            Self::Eval(preprocess) => {
                let [h, w] = preprocess.output_size([image.height(), image.width()]);
                let values = preprocess.pixels(image).map_err(|e| e.to_string())?;
                Ok((values, [h as usize, w as usize]))
            }
            Self::Train { augment, size, normalize } => {
                let view = augment.apply(image, *size, &mut ChaCha8Rng::seed_from_u64(rng_seed));
                let values = normalize.pixels(&view).map_err(|e| e.to_string())?;
                Ok((values, [*size as usize; 2]))
            }
        }
    }
}

/// One batch, in the order the epoch asked for.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[n, 3, height, width]` values, row-major.
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
    pub labels: Vec<usize>,
    /// Positions of the samples in the split.
    pub indices: Vec<usize>,
}

impl Batch {
    /// None of the chunk's images could be read.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A seed per (run, epoch, sample), stable whatever thread handles the sample.
pub fn sample_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    splitmix(splitmix(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ index as u64)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The order of an epoch: a seeded shuffle, or the split's order.
pub fn epoch_order(len: usize, shuffle_seed: Option<(u64, usize)>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if let Some((seed, epoch)) = shuffle_seed {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(seed, epoch, usize::MAX)));
    }
    order
}

/// Starts producing the batches of `order` (in chunks of `batch_size`) on a background thread,
/// `prefetch` batches ahead; `view` picks the augmentation draw. An image that fails to decode is
/// left out of its batch with a warning, and every chunk gives one batch, empty if none of its
/// images could be read, so that a consumer pairing batches with its plan stays in step.
pub fn batches(
    samples: Arc<Vec<Sample>>,
    order: Vec<usize>,
    batch_size: usize,
    transform: Arc<Transform>,
    seed: u64,
    view: usize,
    prefetch: usize,
) -> Receiver<Batch> {
    let (sender, receiver) = sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for chunk in order.chunks(batch_size.max(1)) {
            let made: Vec<_> = chunk
                .par_iter()
                .map(|&i| {
                    let sample = &samples[i];
                    let pixels = read_image(&sample.path).and_then(|image| transform.pixels(&image, sample_seed(seed, view, i)));
                    (i, pixels)
                })
                .collect();
            let mut batch = Batch { pixels: Vec::new(), shape: [0; 4], labels: Vec::new(), indices: Vec::new() };
            let mut size = None;
            for (i, pixels) in made {
                let pixels = pixels.and_then(|(values, hw)| match size.get_or_insert(hw) {
                    first if *first == hw => Ok(values),
                    first => Err(format!("preprocesses to {hw:?}, unlike the batch's {first:?}")),
                });
                match pixels {
                    Ok(values) => {
                        batch.pixels.extend(values);
                        batch.labels.push(samples[i].label);
                        batch.indices.push(i);
                    }
                    Err(err) => eprintln!("warning: skipping {}: {err}", samples[i].path.display()),
                }
            }
            let n = batch.labels.len();
            let [h, w] = size.unwrap_or_default();
            batch.shape = [n, 3, h, w];
            if sender.send(batch).is_err() {
                return; // the consumer stopped early
            }
        }
    });
    receiver
}

/// One pass of a model over `order`'s samples in batches (`batches`' arguments, the augmentation
/// draw given as `(seed, view)`): `each` gets every batch's pixels on `device` with its labels and
/// its samples' positions, and `progress` counts the images. A batch none of whose images could be
/// read is passed over (the loader has warned about each).
#[allow(clippy::too_many_arguments)]
pub fn for_each_batch(
    samples: Arc<Vec<Sample>>,
    order: Vec<usize>,
    batch_size: usize,
    transform: Arc<Transform>,
    (seed, view): (u64, usize),
    device: &Device,
    progress: &ProgressBar,
    mut each: impl FnMut(Tensor<4>, &[usize], &[usize]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for batch in batches(samples, order, batch_size, transform, seed, view, 2).into_iter().filter(|b| !b.is_empty()) {
        let pixels = Tensor::<4>::from_data(TensorData::new(batch.pixels, batch.shape), device);
        each(pixels, &batch.labels, &batch.indices)?;
        progress.inc(batch.labels.len() as u64);
    }
    Ok(())
}

/// Warns once about the images [`drop_unreadable`] left out of `what` (a few named, with why).
pub fn warn_unreadable(bad: &[(Sample, String)], what: &str) {
    if bad.is_empty() {
        return;
    }
    eprintln!("warning: skipping {} unreadable images in {what}:", bad.len());
    for (sample, error) in bad.iter().take(5) {
        eprintln!("  {}: {error}", sample.path.display());
    }
}

/// Decodes every sample once (in parallel) and keeps the readable ones; returns the unreadable
/// paths with their errors, so a run can warn once instead of every epoch.
pub fn drop_unreadable(samples: Vec<Sample>) -> (Vec<Sample>, Vec<(Sample, String)>) {
    let checked: Vec<(Sample, Option<String>)> = samples
        .into_par_iter()
        .map(|sample| {
            let error = read_image(&sample.path).err();
            (sample, error)
        })
        .collect();
    let mut kept = Vec::new();
    let mut bad = Vec::new();
    for (sample, error) in checked {
        match error {
            None => kept.push(sample),
            Some(error) => bad.push((sample, error)),
        }
    }
    (kept, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_unreadable_images_still_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9])).save(&good).unwrap();
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let samples: Vec<Sample> = [&good, &bad, &bad, &good].iter().map(|p| Sample { path: p.to_path_buf(), label: 0 }).collect();
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/vit/preprocessor_config.json");
        let preprocess = vitrine_model::PreprocessConfig::from_json(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        let transform = Arc::new(Transform::Eval(preprocess.at_size(8)));
        let got: Vec<Vec<usize>> = batches(Arc::new(samples), vec![0, 1, 2, 3], 1, transform, 0, 0, 1).into_iter().map(|b| b.indices).collect();
        assert_eq!(got, [vec![0], vec![], vec![], vec![3]]);
    }
}
