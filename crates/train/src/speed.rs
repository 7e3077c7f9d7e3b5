//! Latency measurements shared by `vitrine bench`, `prune` and `compress`: the median time of a
//! forward pass (or of a whole training step) per image, after warm-up.

use std::time::Instant;

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use vitrine_model::{Loaded, Vit};

use crate::recipe::Recipe;
use crate::setup;
use crate::loss::cross_entropy;

/// The middle value (the upper one of an even count).
pub fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median milliseconds per image of `model`'s forward pass on random `[batch, 3, h, w]` input.
pub fn forward_ms_per_image(model: &Vit, shape: [usize; 4], iters: usize, device: &Device) -> f64 {
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let forward = || {
        // Reading the result back makes lazy and asynchronous backends finish the work.
        model.forward_features(x.clone()).into_data();
    };
    forward();
    forward();
    let times = (0..iters.max(1))
        .map(|_| {
            let start = Instant::now();
            forward();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(times) / shape[0] as f64
}

/// Median milliseconds per image of a training step (forward, loss, backward, AdamW; every
/// parameter trained, a new 10-class head) on random input and labels.
pub fn train_step_ms_per_image(loaded: Loaded, shape: [usize; 4], iters: usize, device: &Device) -> Result<f64> {
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let recipe = Recipe { drop_path: 0.0, ..Recipe::default() };
    let ad_device = device.clone().autodiff();
    let (mut model, _) = setup::with_head(loaded, &classes, &recipe, &ad_device)?;
    let mut optimizer = setup::optimizer(&recipe)?;
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &ad_device);
    let labels: Vec<usize> = (0..shape[0]).map(|i| i % classes.len()).collect();
    let mut times = Vec::new();
    for i in 0..iters.max(1) + 2 {
        let start = Instant::now();
        model = vitrine_kernels::on_pool(&ad_device, || {
            let loss = cross_entropy(model.forward(x.clone()), &labels, 0.0);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optimizer.step(1e-5, model, grads)
        });
        // Reading a parameter back makes lazy backends finish the update.
        model.vit.layernorm.gamma.val().into_data();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(times) / shape[0] as f64)
}

/// Images per second the training data pipeline delivers (decode, augment, normalise, on worker
/// threads) over the first `limit` of `samples`, at `side` pixels.
pub fn loader_images_per_s(samples: &[crate::data::Sample], side: u32, limit: usize, batch_size: usize) -> f64 {
    use crate::data::loader::{Transform, batches};
    let preprocess = vitrine_model::PreprocessConfig::from_json("{}").expect("the default processor");
    let transform = std::sync::Arc::new(Transform::train(crate::data::augment::Augment::default(), side, &preprocess));
    let samples: Vec<_> = samples.iter().take(limit).cloned().collect();
    let order = (0..samples.len()).collect();
    let start = Instant::now();
    let images: usize = batches(std::sync::Arc::new(samples), order, batch_size, transform, 0, 0, 2).into_iter().map(|b| b.labels.len()).sum();
    images as f64 / start.elapsed().as_secs_f64()
}
