//! Fine-tuning end to end on a small dataset that the tests draw (coloured shapes), starting from
//! the committed tiny ViT fixture.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use vitrine_model::{Loaded, PreprocessConfig, Vit, load_safetensors};
use vitrine_train::data::augment::Augment;
use vitrine_train::logbook::Logbook;
use vitrine_train::recipe::Recipe;
use vitrine_train::{checkpoint, schedule, setup, trainer};

/// flex's random numbers are one stream per process (`Device::seed` sets it for every thread), and
/// runs seed it and draw from it: tests that train take turns, or a neighbour's draws change theirs.
fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn pretrained(device: &Device) -> (Loaded, PreprocessConfig) {
    let dir = fixture("vit");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let preprocess = PreprocessConfig::from_json(&std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap()).unwrap();
    (load_safetensors(&config, &weights, device).unwrap(), preprocess)
}

fn shapes_dataset(root: &Path, per_class: (usize, usize)) {
    vitrine_train::toy::write_shapes(root, per_class.0, per_class.1, 11).unwrap();
}

fn recipe(data: &Path) -> Recipe {
    Recipe {
        model: "tests/fixtures/vit".into(),
        data: data.display().to_string(),
        epochs: 3,
        batch_size: 8,
        lr: 3e-3,
        // The fixture's weights are random, not pretrained: its blocks train at the head's decayed rate.
        backbone_lr: None,
        unfreeze_per_epoch: 0,
        warmup_steps: 4,
        layer_decay: 0.8,
        drop_path: 0.1,
        dropout: 0.1,
        image_size: 32,
        head_only_epochs: 0,
        checkpoint_secs: 0,
        augment: Augment { rotation_deg: 10.0, ..Augment::default() },
        ..Recipe::default()
    }
}

fn bundle_model(dir: &Path, device: &Device) -> Vit {
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    load_safetensors(&config, &std::fs::read(dir.join("model.safetensors")).unwrap(), device).unwrap().model
}

fn values(model: &Vit, prefix: &str) -> Vec<f32> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|t| t.name.starts_with(prefix))
        .flat_map(|t| t.to_bytes().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>())
        .collect()
}

#[test]
fn loss_falls_accuracy_rises_and_the_export_reloads_identically() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (24, 8));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    let run = tmp.path().join("run");
    let outcome = trainer::start(&run, Recipe { epochs: 4, ..recipe(&data) }, loaded, preprocess.clone(), &device).unwrap();

    let epochs = Logbook::new(&run).epochs().unwrap();
    assert_eq!(epochs.len(), 4);
    assert!(epochs[3].train_loss < epochs[0].train_loss * 0.8, "train loss {} -> {}", epochs[0].train_loss, epochs[3].train_loss);
    assert!(outcome.best_top1 >= 0.9, "val top-1 {}", outcome.best_top1);
    assert!(run.join("report.html").exists());

    // The best bundle reloads (strictly, by HF names) and scores what its epoch scored.
    let best = outcome.best_epoch.unwrap();
    assert!((epochs[best].val.top1 - outcome.best_top1).abs() < 1e-12);
    let bundle = bundle_model(&run.join("best"), &device);
    assert_eq!(val_top1(&bundle, &data, &preprocess, &device), outcome.best_top1, "the best bundle scores otherwise than its epoch");

    // A bundle written from the last checkpoint reloads to exactly the trained model's logits.
    let (trained, _, _) = checkpoint::load(&checkpoint::latest(&run).unwrap().unwrap(), setup_like(&run, &device), setup::optimizer(&Recipe::default()).unwrap()).unwrap();
    let hf = vitrine_model::HfVitConfig::from_json(&std::fs::read_to_string(run.join("model_config.json")).unwrap()).unwrap();
    let written = tmp.path().join("last");
    vitrine_train::bundle::write(&written, &trained.valid(), &hf, hf.model_type().unwrap(), &preprocess.at_size(32)).unwrap();
    let x = Tensor::<4>::from_data(TensorData::new((0..2 * 3 * 32 * 32).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect::<Vec<_>>(), [2, 3, 32, 32]), &device);
    let direct = trained.valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let reloaded = bundle_model(&written, &device).forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(direct, reloaded);
    let labels = vitrine_model::HfVitConfig::from_json(&std::fs::read_to_string(run.join("best/config.json")).unwrap()).unwrap().labels().unwrap();
    assert_eq!(labels, ["bar", "disc", "square"]);
}

/// Validation top-1 of `model` over the dataset's val split, as the run's validation computes it.
fn val_top1(model: &Vit, data: &Path, preprocess: &PreprocessConfig, device: &Device) -> f64 {
    let folder = vitrine_train::data::ImageFolder::open(data, 0).unwrap();
    let transform = std::sync::Arc::new(vitrine_train::data::loader::Transform::Eval(preprocess.at_size(32)));
    let progress = indicatif::ProgressBar::hidden();
    let columns = vitrine_train::evaluate::Columns::All(folder.classes.len());
    vitrine_train::evaluate::evaluate(model, std::sync::Arc::new(folder.val), transform, columns, 8, device, &progress).unwrap().top1
}

/// A model with the run's architecture (weights to be loaded from a checkpoint).
fn setup_like(run: &Path, device: &Device) -> Vit {
    let hf = vitrine_model::HfVitConfig::from_json(&std::fs::read_to_string(run.join("model_config.json")).unwrap()).unwrap();
    hf.to_vit_config(vitrine_model::config::Head::Linear).unwrap().init(&device.clone().autodiff())
}

#[test]
fn head_only_epochs_leave_the_blocks_untouched() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (8, 4));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    // Head-only epochs train the classifier and the final LayerNorm; blocks and embeddings stay.
    let before_blocks = values(&loaded.model, "vit.encoder.");
    let before_embeddings = values(&loaded.model, "vit.embeddings.");
    let run = tmp.path().join("run");
    // PatchDropout on the pixel path (after the embeddings) leaves frozen parts frozen too.
    let recipe = Recipe { epochs: 1, head_only_epochs: 1, patch_dropout: 0.25, ..recipe(&data) };
    let (recipe_seed, recipe_copy) = (recipe.seed, recipe.clone());
    trainer::start(&run, recipe, loaded, preprocess, &device).unwrap();
    let after = bundle_model(&run.join("best"), &device);
    assert!(values(&after, "vit.encoder.") == before_blocks, "a frozen block changed");
    assert!(values(&after, "vit.embeddings.") == before_embeddings, "frozen embeddings changed");
    // The head did train: it is not the one the run started from (the same seed draws it again).
    let ad_device = device.clone().autodiff();
    ad_device.seed(recipe_seed);
    let classes: Vec<String> = ["bar", "disc", "square"].map(String::from).to_vec();
    let (initial, _) = setup::with_head(pretrained(&device).0, &classes, &recipe_copy, &ad_device).unwrap();
    let (head, start) = (values(&after, "classifier."), values(&initial, "classifier."));
    assert_eq!(head.len(), start.len());
    let moved = head.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-4, "the head moved by at most {moved}");
}

#[test]
fn frozen_prefix_from_cache_trains_only_the_top() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (16, 6));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    let block0 = values(&loaded.model, "vit.encoder.layer.0.");
    let embeddings = values(&loaded.model, "vit.embeddings.");
    let block1 = values(&loaded.model, "vit.encoder.layer.1.");
    let run = tmp.path().join("run");
    // With PatchDropout the top block trains on a random subset of the cached tokens.
    let recipe = Recipe { epochs: 2, frozen_blocks: 1, cache_frozen: true, views: 2, patch_dropout: 0.25, ..recipe(&data) };
    trainer::start(&run, recipe, loaded, preprocess, &device).unwrap();
    assert!(run.join("cache/train-32px-view1.f16").exists());
    let after = bundle_model(&run.join("best"), &device);
    assert!(values(&after, "vit.encoder.layer.0.") == block0, "the cached block changed");
    assert!(values(&after, "vit.embeddings.") == embeddings, "the embeddings changed");
    assert!(values(&after, "vit.encoder.layer.1.") != block1, "the top block did not train");
}

#[test]
fn layer_wise_decay_assigns_the_intended_rates() {
    let _one = one_run_at_a_time();
    let device = Device::flex();
    let (loaded, _) = pretrained(&device);
    let recipe = Recipe { lr: 0.01, backbone_lr: Some(0.004), layer_decay: 0.5, min_lr_ratio: 1.0, warmup_steps: 1, head_only_epochs: 0, ..Recipe::default() };
    let mut scheduler = schedule::lr_scheduler(&recipe, 2, schedule::Steps { per_epoch: 10, total: 100 }, 0).unwrap();
    let lr = scheduler.step();
    // The paths the optimizer matches groups against.
    let paths = setup::param_paths(&loaded.model);
    let rate = |prefix: &str| {
        let (id, path) = paths.iter().find(|(_, p)| p.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {paths:?}"));
        lr.lr_from_param(*id, Some(path))
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(rate("classifier."), 0.01));
    assert!(close(rate("vit.layernorm."), 0.01));
    assert!(close(rate("vit.encoder.layer.1."), 0.004));
    assert!(close(rate("vit.encoder.layer.0."), 0.002));
    assert!(close(rate("vit.embeddings."), 0.001));
}

/// The mean of `distance(student, teacher, image)` over the validation images.
fn mean_over_val(data: &Path, preprocess: &PreprocessConfig, device: &Device, distance: impl Fn(Tensor<4>) -> f32) -> f32 {
    let folder = vitrine_train::data::ImageFolder::open(data, 0).unwrap();
    let transform = vitrine_train::data::loader::Transform::Eval(preprocess.clone());
    let mut total = 0.0;
    for sample in &folder.val {
        let image = vitrine_model::decode::decode_image(&std::fs::read(&sample.path).unwrap()).unwrap();
        let (pixels, [h, w]) = transform.pixels(&image, 0).unwrap();
        total += distance(Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, h, w]), device));
    }
    total / folder.val.len() as f32
}

/// Mean KL(teacher || student) at temperature 1 over the validation images.
fn kl_to_teacher(student: &Vit, teacher: &Vit, data: &Path, preprocess: &PreprocessConfig, device: &Device) -> f32 {
    mean_over_val(data, preprocess, device, |x| {
        vitrine_train::distill::kl_divergence(student.forward(x.clone()), teacher.forward(x), 1.0).into_scalar::<f32>()
    })
}

/// Mean squared difference of the classifier inputs over the validation images.
fn feature_distance(student: &Vit, teacher: &Vit, data: &Path, preprocess: &PreprocessConfig, device: &Device) -> f32 {
    mean_over_val(data, preprocess, device, |x| {
        let mine = student.pre_logits(student.forward_features(x.clone()));
        let theirs = teacher.pre_logits(teacher.forward_features(x));
        (mine - theirs).square().mean().into_scalar::<f32>()
    })
}

/// A teacher trained on freshly drawn shapes, for the distillation tests.
struct Taught {
    tmp: tempfile::TempDir,
    data: PathBuf,
    device: Device,
    preprocess: PreprocessConfig,
    /// The teacher's bundle.
    dir: PathBuf,
    teacher: Vit,
}

fn taught() -> Taught {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (24, 8));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    let teacher_run = tmp.path().join("teacher");
    trainer::start(&teacher_run, recipe(&data), loaded, preprocess.clone(), &device).unwrap();
    let dir = teacher_run.join("best");
    let teacher = bundle_model(&dir, &device);
    Taught { tmp, data, device, preprocess, dir, teacher }
}

/// A student cut from the teacher bundle in `dir`: its last block only, with half of its heads.
fn cut_student(dir: &Path, device: &Device) -> Loaded {
    let config_json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let full = load_safetensors(&config_json, &std::fs::read(dir.join("model.safetensors")).unwrap(), device).unwrap();
    let mut keep = vitrine_model::prune::Keep::all(&full.config);
    keep.heads = vec![vec![0, 1], vec![0, 1]];
    let (pruned, pruned_config) = vitrine_model::prune::prune(&full.model, &full.config, &keep, device).unwrap();
    let (student, student_config) = vitrine_model::prune::select_layers(&pruned, &pruned_config, &[1], device).unwrap();
    let mut hf_config = full.hf_config.clone();
    hf_config.num_hidden_layers = 1;
    hf_config.layer_num_attention_heads = Some(student_config.layer_num_attention_heads.clone());
    hf_config.layer_intermediate_size = Some(student_config.layer_intermediate_size.clone());
    Loaded { model: student, config: student_config, hf_config, labels: full.labels.clone(), family: full.family }
}

fn distill_recipe(teacher: &Path, alpha: f64, feature_weight: f64) -> vitrine_train::distill::DistillRecipe {
    vitrine_train::distill::DistillRecipe { teacher: teacher.display().to_string(), temperature: 2.0, alpha, hard: false, teacher_run: None, feature_weight }
}

#[test]
fn distillation_brings_the_student_closer_to_the_teacher() {
    let _one = one_run_at_a_time();
    let Taught { tmp, data, device, preprocess, dir, teacher } = taught();
    let student = cut_student(&dir, &device);
    let before = kl_to_teacher(&student.model, &teacher, &data, &preprocess, &device);

    let run = tmp.path().join("student");
    let recipe = Recipe { views: 2, distill: Some(distill_recipe(&dir, 0.9, 0.0)), epochs: 3, ..recipe(&data) };
    trainer::start(&run, recipe, student, preprocess.clone(), &device).unwrap();
    let after = kl_to_teacher(&bundle_model(&run.join("best"), &device), &teacher, &data, &preprocess, &device);
    assert!(after < before * 0.7, "KL to the teacher {before} -> {after}");
    assert!(run.join("cache/teacher-32px-view1.f32").exists());
}

/// The feature term pulls the student's classifier input towards the teacher's, further than the
/// logits alone do; a student of another width is refused.
#[test]
fn feature_distillation_brings_the_features_closer() {
    let _one = one_run_at_a_time();
    let Taught { tmp, data, device, preprocess, dir, teacher } = taught();
    let before = feature_distance(&cut_student(&dir, &device).model, &teacher, &data, &preprocess, &device);
    let mut after = Vec::new();
    for feature_weight in [0.0, 1.0] {
        let run = tmp.path().join(format!("student-{feature_weight}"));
        let recipe = Recipe { views: 2, distill: Some(distill_recipe(&dir, 0.5, feature_weight)), epochs: 3, ..recipe(&data) };
        trainer::start(&run, recipe, cut_student(&dir, &device), preprocess.clone(), &device).unwrap();
        after.push(feature_distance(&bundle_model(&run.join("best"), &device), &teacher, &data, &preprocess, &device));
    }
    assert!(after[1] < before * 0.5 && after[1] < after[0] * 0.7, "feature distance {before} -> {after:?} (logits only, with features)");
    assert!(tmp.path().join("student-1/cache/teacher-features-32px-view1.f32").exists());

    let other = fixture("dinov2");
    let config = std::fs::read_to_string(other.join("config.json")).unwrap();
    let wider = load_safetensors(&config, &std::fs::read(other.join("model.safetensors")).unwrap(), &device).unwrap();
    let recipe = Recipe { views: 1, distill: Some(distill_recipe(&dir, 0.5, 1.0)), epochs: 1, ..recipe(&data) };
    let error = trainer::start(&tmp.path().join("wider"), recipe, wider, preprocess, &device).unwrap_err();
    assert!(format!("{error:#}").contains("as wide as the teacher's"), "{error:#}");
}

/// A teacher trained on cached frozen blocks lends that cache to distillation: the teacher's logits
/// from it match the teacher run on the images (within the cache's f16 rounding), also for a student
/// at another resolution (the teacher sees its own); a run that saw other views is refused.
#[test]
fn the_teacher_runs_cache_stands_in_for_its_frozen_blocks() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (12, 4));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    let plain = Recipe { augment: Augment::none(), epochs: 1, ..recipe(&data) };
    let teacher_run = tmp.path().join("teacher");
    let teacher_recipe = Recipe { frozen_blocks: 1, cache_frozen: true, views: 1, ..plain.clone() };
    trainer::start(&teacher_run, teacher_recipe, loaded, preprocess.clone(), &device).unwrap();
    let teacher = teacher_run.join("best").display().to_string();

    let distil = |name: &str, teacher_run: Option<String>, seed: u64| {
        let distill = vitrine_train::distill::DistillRecipe { teacher: teacher.clone(), temperature: 2.0, alpha: 0.5, hard: false, teacher_run, feature_weight: 0.0 };
        // The student trains at 24 px; the teacher's logits are still those of its 32 px view.
        let recipe = Recipe { views: 1, image_size: 24, seed, distill: Some(distill), ..plain.clone() };
        let run = tmp.path().join(name);
        trainer::start(&run, recipe, pretrained(&device).0, preprocess.clone(), &device).map(|_| run.join("cache/teacher-32px-view0.f32"))
    };
    let read = |path: PathBuf| -> Vec<f32> {
        std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let from_images = read(distil("from-images", None, 0).unwrap());
    let from_cache = read(distil("from-cache", Some(teacher_run.display().to_string()), 0).unwrap());
    assert_eq!(from_images.len(), from_cache.len());
    let diff = from_images.iter().zip(&from_cache).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = from_images.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-2 * scale.max(1.0), "teacher logits from its cache differ by {diff} (logits up to {scale})");

    let err = distil("other-seed", Some(teacher_run.display().to_string()), 7).unwrap_err();
    assert!(format!("{err:#}").contains("trained on other views"), "{err:#}");
}

/// The largest training loss of the epoch after the head-only one, over the head-only epoch's mean,
/// for a run from `model` (a trained classifier, its head kept) with `recipe`.
/// A run the divergence guard stops still logged its steps; `must_finish` refuses that.
fn unfreeze_jump(model: &Path, recipe: Recipe, device: &Device, run: &Path, must_finish: bool) -> f64 {
    let bundle = vitrine_train::bundle::read(model, device).unwrap();
    match trainer::start(run, recipe, bundle.loaded, bundle.preprocess, device) {
        Ok(_) => {}
        Err(err) if !must_finish && err.to_string().contains("validation loss rose") => {}
        Err(err) => panic!("{err:#}"),
    }
    let steps = Logbook::new(run).steps().unwrap();
    let mean = |epoch: usize| {
        let losses: Vec<f64> = steps.iter().filter(|s| s.epoch == epoch).map(|s| s.loss).collect();
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    let worst_after = steps.iter().filter(|s| s.epoch == 1).map(|s| s.loss).fold(0.0, f64::max);
    worst_after / mean(0)
}

#[test]
fn unfreezing_with_the_defaults_keeps_the_training_loss_near_its_pre_unfreeze_value() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (24, 8));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    // A trained classifier stands in for a pretrained model: its features are worth keeping.
    let trained = tmp.path().join("trained");
    let outcome = trainer::start(&trained, Recipe { epochs: 6, ..recipe(&data) }, loaded, preprocess, &device).unwrap();
    assert!(outcome.best_top1 >= 0.9, "the starting model is not competent: {}", outcome.best_top1);
    let best = trained.join("best");
    // The default rates and warmup, with the toy's size, batch and length: a head-only epoch, then
    // every block at once.
    let defaults = Recipe {
        model: best.display().to_string(),
        data: data.display().to_string(),
        epochs: 2,
        batch_size: 8,
        image_size: 32,
        checkpoint_secs: 0,
        head_only_epochs: 1,
        ..Recipe::default()
    };
    // Stated bound: no step after unfreezing above 1.5x the head-only epoch's mean loss.
    const BOUND: f64 = 1.5;
    let jump = unfreeze_jump(&best, defaults.clone(), &device, &tmp.path().join("defaults"), true);
    assert!(jump <= BOUND, "unfreezing with the defaults raised the loss {jump:.2}x");
    // The check can fail: the head's rate on the blocks, without a warmup, breaks the bound.
    let reckless = Recipe { backbone_lr: Some(0.05), warmup_steps: 1, ..defaults };
    let jump = unfreeze_jump(&best, reckless, &device, &tmp.path().join("reckless"), false);
    assert!(jump > BOUND, "a reckless rate stayed within the bound ({jump:.2}x)");
}

#[test]
fn the_report_escapes_run_names_and_paths() {
    let _one = one_run_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    shapes_dataset(&data, (4, 2));
    let device = Device::flex();
    let (loaded, preprocess) = pretrained(&device);
    let run = tmp.path().join("<script>alert(1)");
    let recipe = Recipe { epochs: 1, model: "<img src=x onerror=alert(2)>".into(), ..recipe(&data) };
    trainer::start(&run, recipe, loaded, preprocess, &device).unwrap();
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "unescaped text in the report");
    assert!(html.contains("&lt;script&gt;alert(1)") && html.contains("&lt;img src=x"));
}
