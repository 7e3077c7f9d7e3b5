//! `vitrine bench`: forward latency of models in the same run, on the same device and input; with
//! `--train`, the time of a whole training step (forward, loss, backward, AdamW) instead.

use anyhow::Result;
use burn::module::Module;
use vitrine_train::speed;
use serde::Serialize;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folders or hf:ORG/NAME (repeat the flag).
    #[arg(long, required_unless_present = "loader")]
    model: Vec<String>,
    /// Also time the training data pipeline (decode, augment, normalise on worker threads) on the
    /// first 512 training images of this ImageFolder, at --image-size (default 224).
    #[arg(long)]
    loader: Option<std::path::PathBuf>,
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
    /// Token merging (ToMe) settings to time each model with, e.g. 0,8,16: token pairs merged per
    /// block (0: off); one row per model and setting.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    tome: Vec<usize>,
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
    /// The instruction set of vitrine's CPU kernels on this machine (avx512, avx2, scalar).
    isa: String,
    /// The integer instruction set of int8 bundles' products (`none`: they compute in f32).
    int8_isa: String,
    /// Peak resident memory of this process so far (Linux `VmHWM`), bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size (Linux only).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    if let Some(data) = &args.loader {
        let folder = vitrine_train::data::ImageFolder::open(data, 0)?;
        let side = args.image_size.unwrap_or(224);
        let rate = speed::loader_images_per_s(&folder.train, side, 512, args.batch.max(32));
        println!("data pipeline: {rate:.1} images/s ({side} px, decode + augment + normalise, {} threads)", rayon::current_num_threads());
    }
    let mut rows = Vec::new();
    let settings: Vec<(&String, usize)> = args.model.iter().flat_map(|m| args.tome.iter().map(move |&r| (m, r))).collect();
    for (name, tome) in settings {
        // Training needs float weights; inference of an int8 bundle runs on integer products.
        let mut model = if args.train { source::load(name, &device)? } else { source::load_for_inference(name, &device)? };
        model.merge_tokens(tome)?;
        let [h, w] = match args.image_size {
            Some(side) => [side, side],
            None => model.preprocess.output_size([model.loaded.config.image_size as u32; 2]),
        };
        let shape = [args.batch, 3, h as usize, w as usize];
        let params = model.loaded.model.num_params();
        let ms_per_image = if args.train {
            speed::train_step_ms_per_image(model.loaded, shape, args.iters, &device)?
        } else {
            speed::forward_ms_per_image(&model.loaded.model, shape, args.iters, &device)
        };
        rows.push(Row {
            model: if tome > 0 { format!("{name} (ToMe r={tome})") } else { name.clone() },
            ms_per_image,
            params,
            peak_rss_bytes: peak_rss_bytes(),
            bytes: model.weight_bytes,
            isa: format!("{:?}", vitrine_kernels::simd::Isa::detect()).to_lowercase(),
            int8_isa: format!("{:?}", vitrine_kernels::int8::Int8Isa::detect()).to_lowercase(),
        });
    }
    if args.train && !args.json {
        println!("(training step: forward, loss, backward and AdamW update, every parameter trained)");
    }
    if rows.is_empty() {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("CPU kernels: {} (int8 products: {})", rows[0].isa, rows[0].int8_isa);
        println!("{:<48} {:>12} {:>10} {:>10}", "model", "ms/image", "params M", "MB");
        for r in &rows {
            println!("{:<48} {:>12.2} {:>10.2} {:>10.2}", r.model, r.ms_per_image, r.params as f64 / 1e6, r.bytes as f64 / 1e6);
        }
    }
    Ok(())
}

