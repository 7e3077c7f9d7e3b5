//! `vitrine train`, `eval`, `export` and `report` end to end: a killed run resumes to the same
//! weights, and bad datasets, folders and models fail with clear messages.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, text, vitrine};

fn model() -> String {
    fixtures().join("vit").display().to_string()
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    let model: &'static str = Box::leak(model().into_boxed_str());
    vec![
        "train", "--model", model, "--data", data, "--out", out, "--epochs", "3", "--batch-size", "4", "--image-size", "32",
        "--lr", "3e-3", "--head-only-epochs", "1", "--checkpoint-secs", "0", "--seed", "5", "--dropout", "0.1",
        // The fixture's weights are random, not pretrained: its blocks need the head's rate to learn.
        "--backbone-lr", "3e-3", "--warmup-steps", "4",
    ]
}

/// Every path under `dir`, sorted.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out.sort();
    out
}

/// Runs `vitrine args` and kills it with SIGKILL as soon as `reached()` holds (checked every
/// `poll`, for at most `deadline`); `what` names the moment, for the failure message if the run
/// ends before it.
fn kill_when(args: &[&str], [poll, deadline]: [Duration; 2], what: &str, reached: impl Fn() -> bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !reached() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {what}");
        assert!(started.elapsed() < deadline, "{what} not reached in {deadline:?}");
        std::thread::sleep(poll);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn checkpoint_name(run: &Path) -> Option<String> {
    std::fs::read_to_string(run.join("checkpoints/latest")).ok()
}

#[test]
fn a_killed_run_resumes_to_exactly_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 40, 6, 1).unwrap();
    let data = data.display().to_string();
    let (a, b) = (tmp.path().join("a").display().to_string(), tmp.path().join("b").display().to_string());

    let straight = vitrine(&train_args(&data, &a));
    assert!(straight.status.success(), "{}", text(&straight.stderr));

    // Kill the second run with SIGKILL in the middle of its second epoch.
    kill_when(&train_args(&data, &b), [Duration::from_millis(2), Duration::from_secs(120)], "its second epoch", || {
        let name = checkpoint_name(Path::new(&b)).unwrap_or_default();
        // step-SSSSSSS-batch-BBBBBB: epoch 2 has begun and is not over.
        let step: usize = name.get(5..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let batch: usize = name.get(19..25).and_then(|s| s.parse().ok()).unwrap_or(0);
        step > 35 && batch > 0
    });
    assert!(!Path::new(&b).join("best").exists() || Path::new(&b).join("epochs.jsonl").exists());

    let resumed = vitrine(&["train", "--resume", &b]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stderr).contains("resuming from"));

    let read = |run: &str, file: &str| std::fs::read(Path::new(run).join(file)).unwrap();
    assert!(read(&a, "best/model.safetensors") == read(&b, "best/model.safetensors"), "weights differ after resume");
    // The logged losses agree too (to rounding: the loss is reduced over threads).
    let losses = |run: &str| -> Vec<(u64, f64)> {
        text(&read(run, "steps.jsonl"))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.iter().map(|l| l.0).collect::<Vec<_>>(), lb.iter().map(|l| l.0).collect::<Vec<_>>());
    assert!(la.iter().zip(&lb).all(|(x, y)| (x.1 - y.1).abs() <= 1e-6 * x.1.abs()), "losses differ after resume");
    assert_eq!(losses(&a).len(), 3 * 30);

    // A finished run refuses to resume, and a second start in the same folder is refused.
    let again = vitrine(&["train", "--resume", &b]);
    assert!(text(&again.stderr).contains("already finished"), "{}", text(&again.stderr));
    let twice = vitrine(&train_args(&data, &b));
    assert!(text(&twice.stderr).contains("already holds a run"), "{}", text(&twice.stderr));

    // Export, eval (JSON), report.
    let bundle = tmp.path().join("bundle").display().to_string();
    let export = vitrine(&["export", &b, "--out", &bundle]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let eval = vitrine(&["eval", "--model", &bundle, "--data", &data, "--json"]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(json["n"], 18);
    assert!(json["top1"].as_f64().unwrap() > 0.5, "{json}");
    assert_eq!(json["per_class"].as_object().unwrap().len(), 3);
    let report = vitrine(&["report", &b, "--compare", &a]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let html = text(&read(&b, "report.html"));
    assert!(html.contains("Compared runs") && html.contains("<svg") && html.contains("Confusion matrix"));
}

#[test]
fn bad_datasets_and_folders_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = |name: &str| root.join(name).display().to_string();
    let fails_with = |data: &Path, run: &str, needle: &str| {
        let output = vitrine(&train_args(&data.display().to_string(), run));
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    };

    // Missing dataset folder; a failed start leaves no output folder behind.
    fails_with(&root.join("nowhere"), &out("r1"), "does not exist");
    assert!(!root.join("r1").exists(), "a failed start left its output folder");

    // A single class.
    let single = root.join("single/train/only");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::create_dir_all(root.join("single/val/only")).unwrap();
    fails_with(&root.join("single"), &out("r2"), "single class");

    // An empty class folder.
    let data = root.join("shapes");
    vitrine_train::toy::write_shapes(&data, 6, 3, 2).unwrap();
    let empty = root.join("empty");
    vitrine_train::toy::write_shapes(&empty, 6, 3, 2).unwrap();
    std::fs::create_dir_all(empty.join("train/void")).unwrap();
    std::fs::create_dir_all(empty.join("val/void")).unwrap();
    fails_with(&empty, &out("r3"), "has no images");

    // An output folder that cannot be created (its parent is a file).
    std::fs::write(root.join("file"), "x").unwrap();
    fails_with(&data, &root.join("file/run").display().to_string(), "cannot create the output folder");

    // An output folder that is the dataset, or inside it (through `..` too): refused, the dataset untouched.
    let listing = |dir: &Path| walk(dir);
    let before = listing(&data);
    for run in [data.clone(), data.join("runs/first"), data.join("train/../val/run")] {
        fails_with(&data, &run.display().to_string(), "is inside the dataset");
    }
    assert_eq!(listing(&data), before, "the dataset was written to");

    // Non-image files and corrupt images are skipped with a count, and training goes on.
    let messy = root.join("messy");
    vitrine_train::toy::write_shapes(&messy, 6, 3, 3).unwrap();
    std::fs::write(messy.join("train/disc/notes.txt"), "not an image").unwrap();
    std::fs::create_dir_all(messy.join("train/disc/more")).unwrap();
    std::fs::write(messy.join("train/square/broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(messy.join("val/bar/cut.jpg"), b"\xff\xd8\xff\xe0 truncated").unwrap();
    let (messy_arg, run_arg) = (messy.display().to_string(), out("r4"));
    let mut args = train_args(&messy_arg, &run_arg);
    args[8] = "1"; // one epoch
    let output = vitrine(&args);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 1 files that are not images"), "{stderr}");
    assert!(stderr.contains("skipped 1 folders inside class folders"), "{stderr}");
    assert!(stderr.contains("skipping 1 unreadable images in train/"), "{stderr}");
    assert!(stderr.contains("skipping 1 unreadable images in val/"), "{stderr}");

    // A model whose labels differ from the data's classes.
    let eval = vitrine(&["eval", "--model", &model(), "--data", &data.display().to_string()]);
    assert!(text(&eval.stderr).contains("matches none of the model's"), "{}", text(&eval.stderr));

    // Resume of a folder that holds no run.
    let resume = vitrine(&["train", "--resume", &out("nothing")]);
    assert!(text(&resume.stderr).contains("is not a run folder"), "{}", text(&resume.stderr));
}

#[test]
fn nan_weights_are_refused_and_a_nan_loss_stops_with_a_message_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 6, 3, 4).unwrap();
    let data = data.display().to_string();
    // The fixture with one weight set to `value`.
    let poisoned = |name: &str, value: f32| -> String {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(fixtures().join("vit").join(name), dir.join(name)).unwrap();
        }
        let bytes = std::fs::read(fixtures().join("vit/model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
            file.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
        let target = tensors.iter_mut().find(|t| t.0 == "vit.encoder.layer.1.output.dense.weight").unwrap();
        target.2[..4].copy_from_slice(&value.to_le_bytes());
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
            .collect();
        std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        dir.display().to_string()
    };
    let run = tmp.path().join("run").display().to_string();
    let train = |model: &str| {
        vitrine(&["train", "--model", model, "--data", &data, "--out", &run, "--epochs", "1", "--batch-size", "4", "--image-size", "32"])
    };
    // A NaN weight: refused when it loads, not blamed on --lr later.
    let output = train(&poisoned("nan", f32::NAN));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(r#"tensor "vit.encoder.layer.1.output.dense.weight": holds 1 NaN or infinite values"#), "{stderr}");
    assert!(!Path::new(&run).exists(), "a refused model left a run folder");

    // A finite weight so large that the first forward pass overflows: the loss is NaN.
    let output = train(&poisoned("huge", f32::MAX));
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("the loss became NaN") && stderr.contains("last good checkpoint"), "{stderr}");
    assert!(checkpoint_name(Path::new(&run)).unwrap().starts_with("step-0000000"));
}

#[test]
fn a_diverging_unfreeze_stops_the_run_and_resumes_from_the_epoch_before_with_lower_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 24, 8, 6).unwrap();
    let data = data.display().to_string();
    // A competent model first (its head is kept: same classes), with a low validation loss.
    let trained = tmp.path().join("trained").display().to_string();
    let mut args = train_args(&data, &trained);
    args[8] = "6";
    assert!(vitrine(&args).status.success());
    // A head-only epoch, then every block at a rate no trained model survives.
    let (model, run) = (format!("{trained}/best"), tmp.path().join("run").display().to_string());
    let args = [
        "train", "--model", &model, "--data", &data, "--out", &run, "--epochs", "3", "--batch-size", "4", "--image-size", "32",
        "--head-only-epochs", "1", "--backbone-lr", "1", "--warmup-steps", "1", "--unfreeze-per-epoch", "0", "--label-smoothing",
        "0", "--checkpoint-secs", "0", "--seed", "5",
    ];
    let output = vitrine(&args);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}{}", text(&output.stdout));
    assert!(stderr.contains("validation loss rose from") && stderr.contains("epoch 2, the epoch that began training"), "{stderr}");
    assert!(stderr.contains(&format!("vitrine train --resume {run} --lr")), "{stderr}");
    // The checkpoint went back to the end of epoch 1 (72 images in batches of 4: 18 steps).
    assert_eq!(checkpoint_name(Path::new(&run)).unwrap(), "step-0000018-batch-000000");

    // Options the recipe fixes are refused on resume; the rates may change, and the run finishes.
    let refused = vitrine(&["train", "--resume", &run, "--batch-size", "8"]);
    assert!(text(&refused.stderr).contains("--batch-size cannot change when a run resumes"), "{}", text(&refused.stderr));
    let resumed = vitrine(&["train", "--resume", &run, "--backbone-lr", "1e-4"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let recipe: serde_json::Value = serde_json::from_slice(&std::fs::read(Path::new(&run).join("recipe.json")).unwrap()).unwrap();
    assert_eq!(recipe["backbone_lr"], 1e-4);
    let epochs = vitrine_train::logbook::Logbook::new(Path::new(&run)).epochs().unwrap();
    assert_eq!(epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), [0, 1, 2], "the logbook holds each epoch once");
}

#[test]
fn eval_reads_every_image_of_a_flat_folder_and_matches_labels_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("shapes");
    vitrine_train::toy::write_shapes(&data, 6, 4, 7).unwrap();
    let (data_arg, run) = (data.display().to_string(), root.join("run").display().to_string());
    let mut args = train_args(&data_arg, &run);
    args[8] = "1";
    assert!(vitrine(&args).status.success());
    let bundle = format!("{run}/best");
    let eval = |model: &str, data: &Path, split: Option<&str>| {
        let mut args = vec!["eval", "--model", model, "--json"];
        let data = data.display().to_string();
        args.extend(["--data", &data]);
        args.extend(split.iter().flat_map(|s| ["--split", s]));
        let output = vitrine(&args);
        assert!(output.status.success(), "{}", text(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };

    // A folder of class folders alone: every one of its images, not a held-out share.
    let flat = root.join("flat");
    std::fs::rename(data.join("train"), &flat).unwrap();
    let json = eval(&bundle, &flat, None);
    assert_eq!((json["n"].as_u64(), json["images"].as_u64()), (Some(18), Some(18)), "{json}");
    assert!(json["evaluated"].as_str().unwrap().contains("every image"), "{json}");

    // Only val/ there: `--split val` reads it.
    let json = eval(&bundle, &data, Some("val"));
    assert_eq!(json["n"], 12, "{json}");

    // Two of the model's three classes, their folders named in another case: evaluated over those two.
    let subset = root.join("subset");
    std::fs::create_dir_all(&subset).unwrap();
    for (from, to) in [("disc", "Disc"), ("bar", "BAR")] {
        std::fs::rename(data.join("val").join(from), subset.join(to)).unwrap();
    }
    let json = eval(&bundle, &subset, None);
    assert_eq!(json["classes"], serde_json::json!(["BAR", "Disc"]), "{json}");
    assert_eq!(json["n"], 8, "{json}");
    assert!(json["evaluated"].as_str().unwrap().contains("of the model's 3"), "{json}");

    // The same labels listed in another order are matched by name (the head's columns follow).
    let reordered = root.join("reordered");
    std::fs::create_dir_all(&reordered).unwrap();
    for entry in std::fs::read_dir(&bundle).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, reordered.join(path.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(reordered.join("config.json")).unwrap()).unwrap();
    config["id2label"] = serde_json::json!({"0": "square", "1": "bar", "2": "disc"});
    std::fs::write(reordered.join("config.json"), config.to_string()).unwrap();
    let original = eval(&bundle, &flat, None);
    let json = eval(&reordered.display().to_string(), &flat, None);
    assert_eq!(json["n"], 18, "{json}");
    assert_eq!(json["per_class"]["square"], original["per_class"]["bar"], "column 0 now reads as square: {json} {original}");
}

#[test]
fn a_start_killed_at_any_moment_either_starts_again_or_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 6, 3, 7).unwrap();
    let data = data.display().to_string();
    let killed_once = |run: &str, first_file: &str| -> Vec<String> {
        let mut args: Vec<String> = train_args(&data, run).into_iter().map(String::from).collect();
        args[8] = "1".into(); // one epoch
        let borrowed: Vec<&str> = args.iter().map(String::as_str).collect();
        kill_when(&borrowed, [Duration::from_micros(200), Duration::from_secs(60)], first_file, || Path::new(run).join(first_file).exists());
        args
    };
    // Killed as soon as the folder holds its first file: no run yet, and a new start succeeds.
    let first = tmp.path().join("first").display().to_string();
    let args = killed_once(&first, "model_config.json");
    let again = vitrine(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.status.success(), "{}", text(&again.stderr));
    // Killed as soon as recipe.json appears: the run exists, with a checkpoint to resume from.
    let second = tmp.path().join("second").display().to_string();
    killed_once(&second, "recipe.json");
    let resumed = vitrine(&["train", "--resume", &second]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
}

#[test]
fn broken_run_files_are_named_in_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 6, 3, 8).unwrap();
    let run = tmp.path().join("run");
    let (data, run_arg) = (data.display().to_string(), run.display().to_string());
    let mut args = train_args(&data, &run_arg);
    args[8] = "1";
    assert!(vitrine(&args).status.success());
    let state = run.join("checkpoints").join(checkpoint_name(&run).unwrap()).join("state.json");
    for (file, needle) in [(state, "state.json is not valid"), (run.join("recipe.json"), "recipe.json is not valid")] {
        std::fs::write(&file, "{ torn").unwrap();
        let output = vitrine(&["train", "--resume", &run_arg, "--epochs", "2"]);
        let stderr = text(&output.stderr);
        assert!(!output.status.success() && stderr.contains(needle), "{stderr}");
    }
}
