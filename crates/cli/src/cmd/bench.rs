//! `vitrine bench`: forward latency of models in the same run, on the same device and input; with
//! `--train`, the time of a whole training step (forward, loss, backward, AdamW) instead.

use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use vitrine_train::recipe::Recipe;
use vitrine_train::setup;
use vitrine_train::trainer::cross_entropy;
use serde::Serialize;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folders or hf:ORG/NAME (repeat the flag).
    #[arg(long, required = true)]
    model: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed forward passes per model (after 2 warm-up passes); the median is reported.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Input side in pixels (default: each model's preprocessing output).
    #[arg(long)]
    image_size: Option<u32>,
    /// Where the models run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Time training steps (every parameter trained, a new 10-class head) instead of inference.
    #[arg(long)]
    train: bool,
}

#[derive(Serialize)]
struct Row {
    model: String,
    ms_per_image: f64,
    params: usize,
    bytes: u64,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let mut rows = Vec::new();
    for name in &args.model {
        let model = source::load(name, &device)?;
        let [h, w] = match args.image_size {
            Some(side) => [side, side],
            None => model.preprocess.output_size([model.loaded.config.image_size as u32; 2]),
        };
        let shape = [args.batch, 3, h as usize, w as usize];
        let params = model.loaded.model.num_params();
        let mut times = if args.train {
            train_step_times(model.loaded, shape, args.iters, &device)?
        } else {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let forward = || {
                let out = model.loaded.model.forward_features(x.clone());
                // Reading the result back makes lazy and asynchronous backends finish the work.
                out.into_data();
            };
            forward();
            forward();
            (0..args.iters.max(1))
                .map(|_| {
                    let start = Instant::now();
                    forward();
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect()
        };
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        rows.push(Row {
            model: name.clone(),
            ms_per_image: median / args.batch as f64,
            params,
            bytes: model.weight_bytes,
        });
    }
    if args.train && !args.json {
        println!("(training step: forward, loss, backward and AdamW update, every parameter trained)");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<48} {:>12} {:>10} {:>10}", "model", "ms/image", "params M", "MB");
        for r in &rows {
            println!("{:<48} {:>12.2} {:>10.2} {:>10.2}", r.model, r.ms_per_image, r.params as f64 / 1e6, r.bytes as f64 / 1e6);
        }
    }
    Ok(())
}

/// Milliseconds of full training steps (after 2 warm-up steps) on random images and labels.
fn train_step_times(loaded: vitrine_model::Loaded, shape: [usize; 4], iters: usize, device: &Device) -> Result<Vec<f64>> {
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let recipe = Recipe { drop_path: 0.0, ..Recipe::default() };
    let (mut model, _) = setup::with_head(loaded, &classes, &recipe, &device.clone().autodiff())?;
    let mut optimizer = setup::optimizer(&recipe)?;
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device.clone().autodiff());
    let labels: Vec<usize> = (0..shape[0]).map(|i| i % classes.len()).collect();
    let mut times = Vec::new();
    for i in 0..iters.max(1) + 2 {
        let start = Instant::now();
        let loss = cross_entropy(model.forward(x.clone()), &labels, 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-5, model, grads);
        // Reading a parameter back makes lazy backends finish the update.
        model.vit.layernorm.gamma.val().into_data();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}
