//! `vitrine predict`: top-k classes for each image.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;
use vitrine_model::classes::{TopClass, softmax, top_k};
use vitrine_train::data::image_file::read_image;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (config.json + model.safetensors [+ preprocessor_config.json]) or hf:ORG/NAME.
    #[arg(long)]
    model: String,
    /// Number of classes to show per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print one JSON array, one object per image in order.
    #[arg(long)]
    json: bool,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Token merging (ToMe): token pairs merged in every block, a training-free speed-up (0: off).
    #[arg(long, default_value_t = 0)]
    tome: usize,
    /// Images to classify (PNG, JPEG, WebP, GIF, BMP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Prediction {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    top: Option<Vec<TopClass>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let mut model = source::load_for_inference(&args.model, &device)?;
    model.merge_tokens(args.tome)?;
    if !model.loaded.model.has_head() {
        bail!("{} is a backbone without a classifier: fine-tune a head first", args.model);
    }
    let mut results = Vec::new();
    for path in &args.images {
        let image = path.display().to_string();
        let outcome = read_image(path).and_then(|rgb| model.preprocess.batch(&[&*rgb], &device).map_err(|e| e.to_string()));
        results.push(match outcome {
            Ok(pixels) => {
                let logits = model.loaded.model.forward(pixels).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits");
                Prediction { image, top: Some(top_k(&softmax(&logits), args.top_k, &model.loaded.labels)), error: None }
            }
            Err(error) => {
                eprintln!("error: {image}: {error}");
                Prediction { image, top: None, error: Some(error) }
            }
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in &results {
            if let Some(top) = &result.top {
                println!("{}", result.image);
                for class in top {
                    println!("  {:>6.2}%  {} ({})", 100.0 * class.prob, class.label, class.index);
                }
            }
        }
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} images could not be classified", results.len());
    }
    Ok(())
}
