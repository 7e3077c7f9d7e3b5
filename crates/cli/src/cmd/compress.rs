//! `vitrine compress`: the whole pipeline from a teacher to a small bundle (distil -> prune ->
//! fine-tune with the teacher -> int8), each step in its own folder and skipped when already done,
//! so a killed pipeline resumes step by step. Ends with a report comparing every step with the
//! teacher on the same validation images: accuracy, latency, size on disk and peak memory
//! (accuracies are kept between runs for bundles whose files did not change; timings never are).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use vitrine_model::Storage;
use vitrine_train::data::{ImageFolder, check_labels};
use vitrine_train::data::loader::Transform;
use vitrine_train::evaluate::{Columns, evaluate};
use vitrine_train::report::compression::{self, Row};
use vitrine_train::recipe::Recipe;
use vitrine_train::run_dir::RunDir;
use vitrine_train::{bundle, importance, speed, trainer};

use super::distill::{StudentSpec, TeachingArgs, cut_from_teacher};
use accuracies::Accuracies;
use super::train::RecipeArgs;
use crate::source;

mod accuracies;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher bundle (a classifier for the dataset's classes).
    #[arg(long)]
    teacher: String,
    /// ImageFolder root.
    #[arg(long)]
    data: PathBuf,
    /// Pipeline folder: one sub-folder per step, the final bundle in final/, report.md and report.html.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    cut: StudentSpec,
    /// Heads the pruning step removes from the distilled student (0: no pruning step).
    #[arg(long, default_value_t = 0)]
    prune_heads: usize,
    /// Epochs of the fine-tuning step after pruning (0: no fine-tuning step).
    #[arg(long, default_value_t = 1)]
    finetune_epochs: usize,
    /// Bottom blocks the fine-tuning step keeps frozen (default: the distillation step's
    /// --frozen-blocks); 0 trains every block, on images rather than cached blocks.
    #[arg(long)]
    finetune_frozen_blocks: Option<usize>,
    /// Token merging settings reported next to the final bundle (token pairs merged per block).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    tome: Vec<usize>,
    #[command(flatten)]
    teaching: TeachingArgs,
    /// Options of the distillation step (and, with --finetune-epochs, of the fine-tuning step).
    #[command(flatten)]
    recipe: RecipeArgs,
}

/// Runs `step` into `dir` unless `dir/done` exists, then marks it done.
fn step(name: &str, dir: &Path, run: impl FnOnce() -> Result<()>) -> Result<()> {
    if dir.join("done").exists() {
        println!("== {name}: done already ({})", dir.display());
        return Ok(());
    }
    println!("== {name}");
    run().with_context(|| format!("step {name}"))?;
    std::fs::write(dir.join("done"), "")?;
    Ok(())
}

/// Starts the training run in `dir`, or resumes it if it was interrupted.
fn train(dir: &Path, start: impl FnOnce() -> Result<trainer::Outcome>, device: &burn::tensor::Device) -> Result<()> {
    if !RunDir(dir.to_path_buf()).recipe().exists() {
        return start().map(|_| ());
    }
    if trainer::finished(dir)? {
        return Ok(());
    }
    trainer::resume(dir, Ok, device).map(|_| ())
}

pub fn run(args: Args) -> Result<()> {
    let device = args.recipe.device().device()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let data = ImageFolder::open(&args.data, 0)?;
    let teacher = source::load(&args.teacher, &device)?;
    check_labels("the teacher", &teacher.loaded.labels, &data.classes)?;
    let distill = args.teaching.recipe(&args.teacher, false);
    let dir = |name: &str| args.out.join(name);

    // 1. Distil into a student cut from the teacher.
    let layers = if args.cut.layers.is_empty() {
        (0..teacher.loaded.config.num_hidden_layers).step_by(2).collect()
    } else {
        args.cut.layers.clone()
    };
    step("distil", &dir("distil"), || {
        let mut recipe = args.recipe.recipe(Recipe::distillation(), &args.teacher, &args.data);
        recipe.views = recipe.views.max(1);
        recipe.distill = Some(distill.clone());
        let spec = StudentSpec { layers: layers.clone(), image_size: Some(recipe.image_size), ..args.cut.clone() };
        train(&dir("distil"), || trainer::start(&dir("distil"), recipe, cut_from_teacher(&args.teacher, &spec, &data, &device)?, teacher.preprocess.clone(), &device), &device)
    })?;

    // 2. Prune heads of the distilled student.
    let mut last = dir("distil/best");
    if args.prune_heads > 0 {
        step("prune", &dir("prune"), || {
            let ad_device = device.clone().autodiff();
            let student = source::load(&last.display().to_string(), &ad_device)?;
            let train = data.train.clone();
            let transform = Arc::new(Transform::Eval(student.preprocess.clone()));
            let progress = trainer::bar(512.min(train.len()) as u64, "head importance");
            let scores = importance::measure(&student.loaded.model, Arc::new(train), transform, 16, 512, &ad_device, &progress)?;
            progress.finish_and_clear();
            let keep = importance::plan(&scores, args.prune_heads, 0.0);
            let model = burn::module::Module::valid(&student.loaded.model);
            let (pruned, config) = vitrine_model::prune::prune(&model, &student.loaded.config, &keep, &device)?;
            let hf_config = student.loaded.hf_config.with_architecture(&config);
            bundle::write(&dir("prune"), &pruned, &hf_config, hf_config.model_type()?, &student.preprocess)
        })?;
        last = dir("prune");
    }

    // 3. Fine-tune the pruned student, still with the teacher.
    if args.finetune_epochs > 0 {
        step("fine-tune", &dir("finetune"), || {
            let pruned = source::load(&last.display().to_string(), &device)?;
            let mut recipe = args.recipe.recipe(Recipe::distillation(), &last.display().to_string(), &args.data);
            recipe.epochs = args.finetune_epochs;
            recipe.head_only_epochs = 0;
            recipe.lr *= 0.3;
            recipe.views = recipe.views.max(1);
            if let Some(frozen) = args.finetune_frozen_blocks {
                recipe.frozen_blocks = frozen;
                recipe.cache_frozen &= frozen > 0;
            }
            recipe.distill = Some(distill.clone());
            reuse_teacher_logits(&dir("distil"), &dir("finetune"))?;
            train(&dir("finetune"), || trainer::start(&dir("finetune"), recipe, pruned.loaded, pruned.preprocess, &device), &device)
        })?;
        last = dir("finetune/best");
    }

    // 4. int8 weights.
    step("quantize", &dir("final"), || {
        let model = source::load(&last.display().to_string(), &device)?;
        let hf_config = &model.loaded.hf_config;
        bundle::write_as(&dir("final"), &model.loaded.model, hf_config, hf_config.model_type()?, &model.preprocess, Storage::Int8)
    })?;

    report(&args, &data, &device)
}

/// The fine-tuning step sees the distillation step's views (same data, seed and augmentation), so
/// the teacher's logits saved by the latter serve the former as they are.
fn reuse_teacher_logits(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(from.join("cache")) else { return Ok(()) };
    std::fs::create_dir_all(to.join("cache"))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("teacher-") && !to.join("cache").join(&name).exists() {
            std::fs::copy(entry.path(), to.join("cache").join(&name))?;
        }
    }
    Ok(())
}

/// This program, to time each bundle in a process of its own. Linux names a binary that was replaced
/// while it ran (a rebuild during a long pipeline) `PATH (deleted)`; the new one at PATH serves.
fn this_program() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    match exe.to_str().and_then(|path| path.strip_suffix(" (deleted)")) {
        Some(path) if Path::new(path).exists() => Ok(PathBuf::from(path)),
        _ => Ok(exe),
    }
}

/// Processes per bundle whose latencies (each the median of `TIMING_PASSES` passes) the report takes the median of.
const TIMING_ROUNDS: usize = 3;
/// Forward passes per `vitrine bench` process.
const TIMING_PASSES: usize = 20;

/// One `vitrine bench --json` row: `bundle` alone in a process, batch 1, median of `TIMING_PASSES` passes.
fn bench(bundle: &str, tome: usize) -> Result<serde_json::Value> {
    let out = Command::new(this_program()?)
        .args(["bench", "--model", bundle, "--batch", "1", "--iters", &TIMING_PASSES.to_string(), "--json", "--tome", &tome.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("timing {bundle}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(rows[0].clone())
}

/// Evaluates every step's bundle on the same validation images, times each in processes of its own
/// (for a fair peak-memory figure), and writes report.json, report.md and report.html.
fn report(args: &Args, data: &ImageFolder, device: &burn::tensor::Device) -> Result<()> {
    let mut steps = vec![("teacher".to_string(), PathBuf::from(&args.teacher), 0), ("distilled".to_string(), args.out.join("distil/best"), 0)];
    if args.prune_heads > 0 {
        steps.push(("pruned".to_string(), args.out.join("prune"), 0));
    }
    if args.finetune_epochs > 0 {
        steps.push(("fine-tuned".to_string(), args.out.join("finetune/best"), 0));
    }
    steps.push(("int8 (final)".to_string(), args.out.join("final"), 0));
    // Token merging: a training-free speed-up of the final bundle, beside the trained ones.
    steps.extend(args.tome.iter().filter(|&&r| r > 0).map(|&r| (format!("final + ToMe r={r}"), args.out.join("final"), r)));
    let val = data.val.clone();
    let val = Arc::new(val);
    // Each bundle is timed in a process of its own (as it would run, and for its own peak memory),
    // in rounds over all of them, so that a slow spell of the shared machine falls on every one.
    let mut timings: Vec<Vec<serde_json::Value>> = vec![Vec::new(); steps.len()];
    for _ in 0..TIMING_ROUNDS {
        for ((_, dir, tome), timing) in steps.iter().zip(&mut timings) {
            timing.push(bench(&dir.display().to_string(), *tome)?);
        }
    }
    let mut accuracies = Accuracies::open(&args.out);
    let mut rows = Vec::new();
    for (name, bundle_dir, tome) in &steps {
        let path = bundle_dir.display().to_string();
        let key = accuracies::key(bundle_dir, *tome, &val);
        let top1 = match key.as_deref().and_then(|key| accuracies.get(key)) {
            Some(top1) => {
                println!("val: {name}: unchanged since the last report ({})", accuracies::FILE);
                top1
            }
            None => {
                let mut model = source::load_for_inference(&path, device)?;
                model.merge_tokens(*tome)?;
                let progress = trainer::bar(val.len() as u64, &format!("val: {name}"));
                let eval = evaluate(&model.loaded.model, val.clone(), Arc::new(Transform::Eval(model.preprocess.clone())), Columns::All(data.classes.len()), 32, device, &progress)?;
                progress.finish_and_clear();
                if let Some(key) = key {
                    accuracies.insert(key, eval.top1)?;
                }
                eval.top1
            }
        };
        let timing = &timings[rows.len()];
        let median = |key: &str| speed::median(timing.iter().map(|t| t[key].as_f64().unwrap_or(0.0)).collect());
        rows.push(Row {
            step: name.clone(),
            bundle: path,
            top1,
            ms_per_image: median("ms_per_image"),
            params: median("params") as u64,
            bytes: median("bytes") as u64,
            peak_rss_bytes: median("peak_rss_bytes") as u64,
        });
    }
    let timing = format!("batch 1, median of {TIMING_PASSES} passes, native CPU (burn flex), the median of {TIMING_ROUNDS} `vitrine bench` processes per bundle, run in rounds over all bundles");
    let md = compression::write(&args.out, &args.teacher, val.len(), &timing, &rows)?;
    print!("{md}");
    Ok(())
}
