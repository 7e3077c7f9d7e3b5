//! `vitrine prune`: remove the least important attention heads (and MLP neurons), measured on
//! data, and report accuracy and speed for each pruning level.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use burn::module::Module;
use vitrine_model::prune::prune;
use vitrine_train::data::{ImageFolder, check_labels};
use vitrine_train::data::loader::Transform;
use vitrine_train::evaluate::{Columns, evaluate};
use vitrine_train::importance::{self, Importance};
use vitrine_train::report::pruning::{self, Level};
use vitrine_train::trainer::bar;
use vitrine_train::{bundle, speed};

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME with a classifier for the dataset's classes.
    #[arg(long)]
    model: String,
    /// ImageFolder root: importance is measured on train/, accuracy on val/.
    #[arg(long)]
    data: PathBuf,
    /// Heads to remove in all (the least important across layers; each layer keeps one).
    #[arg(long, conflicts_with = "fraction", required_unless_present = "fraction")]
    heads: Option<usize>,
    /// Fraction of all heads to remove.
    #[arg(long)]
    fraction: Option<f64>,
    /// Fraction of each layer's MLP neurons to remove.
    #[arg(long, default_value_t = 0.0)]
    mlp: f64,
    /// Training images used to measure importance.
    #[arg(long, default_value_t = 512)]
    images: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Also evaluate these numbers of removed heads (a curve: accuracy and speed per level).
    #[arg(long, value_delimiter = ',')]
    levels: Vec<usize>,
    /// Folder for the pruned bundle, importance.json and the pruning curve.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let ad_device = device.clone().autodiff();
    let model = source::load(&args.model, &ad_device)?;
    let data = ImageFolder::open(&args.data, 0)?;
    check_labels("the model", &model.loaded.labels, &data.classes)?;
    if !(0.0..1.0).contains(&args.mlp) {
        bail!("--mlp must be in [0, 1), got {}", args.mlp);
    }
    let total_heads: usize = model.loaded.config.layer_num_attention_heads.iter().sum();
    let layers = model.loaded.config.num_hidden_layers;
    let remove = match (args.heads, args.fraction) {
        (Some(n), _) => n,
        (None, Some(f)) if (0.0..1.0).contains(&f) => (total_heads as f64 * f).round() as usize,
        (None, f) => bail!("--fraction must be in [0, 1), got {f:?}"),
    };
    if remove > total_heads - layers {
        bail!("cannot remove {remove} of {total_heads} heads: every one of the {layers} layers must keep at least one");
    }
    std::fs::create_dir_all(&args.out)?;

    let transform = Arc::new(Transform::Eval(model.preprocess.clone()));
    let train = data.train.clone();
    let progress = bar(args.images.min(train.len()) as u64, "measuring importance");
    let scores: Importance =
        importance::measure(&model.loaded.model, Arc::new(train), transform.clone(), args.batch_size, args.images, &ad_device, &progress)?;
    progress.finish_and_clear();
    std::fs::write(args.out.join("importance.json"), serde_json::to_string_pretty(&scores)?)?;

    let inference = model.loaded.model.valid();
    let val = data.val.clone();
    let val = Arc::new(val);
    let side = model.preprocess.output_size([224, 224]);
    let shape = [8, 3, side[0] as usize, side[1] as usize];
    let mut levels: Vec<usize> = args.levels.iter().copied().filter(|&l| l <= total_heads - layers).chain([0, remove]).collect();
    levels.sort();
    levels.dedup();
    let mut rows = Vec::new();
    let mut chosen = None;
    for &level in &levels {
        let mlp = if level == remove { args.mlp } else { 0.0 };
        let keep = importance::plan(&scores, level, mlp);
        let (pruned, config) = prune(&inference, &model.loaded.config, &keep, &device)?;
        let progress = bar(val.len() as u64, &format!("val, {level} heads removed"));
        let eval = evaluate(&pruned, val.clone(), transform.clone(), Columns::All(data.classes.len()), 32, &device, &progress)?;
        progress.finish_and_clear();
        let row = Level {
            heads_removed: level,
            mlp_fraction: mlp,
            params: pruned.num_params(),
            top1: eval.top1,
            ms_per_image: speed::forward_ms_per_image(&pruned, shape, 5, &device),
        };
        println!(
            "{:>3} heads removed, MLP -{:>3.0}%: {:>6.2} M params, val top-1 {:.2}%, {:.2} ms/image",
            row.heads_removed,
            100.0 * mlp,
            row.params as f64 / 1e6,
            100.0 * row.top1,
            row.ms_per_image
        );
        rows.push(row);
        if level == remove {
            chosen = Some((pruned, config, keep));
        }
    }
    let (pruned, config, keep) = chosen.expect("the chosen level is among the levels");
    let hf_config = model.loaded.hf_config.with_architecture(&config);
    bundle::write(&args.out, &pruned, &hf_config, hf_config.model_type()?, &model.preprocess)?;
    pruning::write(&args.out, &args.model, &keep.heads, &rows)?;
    println!("wrote {} (heads per layer {:?})", args.out.display(), config.layer_num_attention_heads);
    Ok(())
}
