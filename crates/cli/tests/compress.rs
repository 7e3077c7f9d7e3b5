//! `vitrine prune`, `quantize` and `distill` end to end on a toy dataset, and their refusals.

mod common;

use common::{fixtures, ok, text, vitrine};

#[test]
fn prune_quantize_and_distill_a_toy_model() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name).display().to_string();
    vitrine_train::toy::write_shapes(tmp.path().join("shapes").as_path(), 16, 6, 7).unwrap();
    let data = path("shapes");
    let fixture = fixtures().join("vit").display().to_string();
    ok(vitrine(&[
        "train", "--model", &fixture, "--data", &data, "--out", &path("run"), "--epochs", "2", "--batch-size", "8",
        "--image-size", "32", "--lr", "3e-3", "--head-only-epochs", "0",
    ]));
    let model = path("run/best");

    // Pruning: 3 of 8 heads and a quarter of the MLP go; the bundle is smaller and loads.
    let out = ok(vitrine(&["prune", "--model", &model, "--data", &data, "--heads", "3", "--mlp", "0.25", "--levels", "1", "--out", &path("pruned")]));
    assert!(out.contains("3 heads removed"), "{out}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("pruned/config.json")).unwrap()).unwrap();
    let heads: usize = config["layer_num_attention_heads"].as_array().unwrap().iter().map(|h| h.as_u64().unwrap() as usize).sum();
    assert_eq!(heads, 5);
    assert!(std::fs::metadata(path("pruned/model.safetensors")).unwrap().len() < std::fs::metadata(path("run/best/model.safetensors")).unwrap().len());
    assert!(std::fs::read_to_string(path("pruned/pruning.html")).unwrap().contains("<svg"));
    ok(vitrine(&["eval", "--model", &path("pruned"), "--data", &data, "--json"]));

    // Pruning every head of some layer is refused.
    let all = vitrine(&["prune", "--model", &model, "--data", &data, "--heads", "7", "--out", &path("p2")]);
    assert!(text(&all.stderr).contains("must keep at least one"), "{}", text(&all.stderr));

    // int8: smaller, and its accuracy stays close (the toy's 18 validation images may differ by one).
    ok(vitrine(&["quantize", "--model", &model, "--out", &path("q8")]));
    let eval = |m: &str| -> f64 {
        let json: serde_json::Value = serde_json::from_str(&ok(vitrine(&["eval", "--model", m, "--data", &data, "--json"]))).unwrap();
        json["top1"].as_f64().unwrap()
    };
    assert!((eval(&path("q8")) - eval(&model)).abs() <= 1.0 / 18.0 + 1e-9);
    let bad_scheme = vitrine(&["quantize", "--model", &model, "--out", &path("q4"), "--scheme", "int4"]);
    assert!(text(&bad_scheme.stderr).contains("invalid value 'int4'"), "{}", text(&bad_scheme.stderr));

    // Distillation into the teacher's last block with two heads per block, at 24 px (the teacher's
    // logits stay those of its 32 px view); the student's position table is resized to its 3x3 grid.
    let out = ok(vitrine(&[
        "distill", "--teacher", &model, "--data", &data, "--out", &path("student"), "--student-layers", "1", "--student-heads", "2",
        "--epochs", "2", "--batch-size", "8", "--image-size", "24", "--lr", "3e-3", "--head-only-epochs", "0",
    ]));
    assert!(out.contains("student: 1 blocks, heads [2]"), "{out}");
    assert!(std::path::Path::new(&path("student/cache/teacher-32px-view0.f32")).exists());
    let student_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path("student/best/config.json")).unwrap()).unwrap();
    assert_eq!(student_config["image_size"], 24);
    ok(vitrine(&["eval", "--model", &path("student/best"), "--data", &data, "--json"]));

    // The whole pipeline, then again: every step is skipped and only the report is rebuilt.
    let pipeline = [
        "compress", "--teacher", &model, "--data", &data, "--out", &path("compressed"), "--student-layers", "1", "--student-heads", "2",
        "--prune-heads", "1", "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--lr", "3e-3", "--head-only-epochs", "0", "--tome", "2",
    ];
    let report = ok(vitrine(&pipeline));
    for row in ["| teacher |", "| distilled |", "| pruned |", "| fine-tuned |", "| int8 (final) |", "| final + ToMe r=2 |"] {
        assert!(report.contains(row), "{report}");
    }
    let again = ok(vitrine(&pipeline));
    assert_eq!(again.matches("done already").count(), 4, "{again}");
    // ... and the six rows' accuracies are kept, not measured again, until a bundle's files change.
    assert_eq!(again.matches("unchanged since the last report").count(), 6, "{again}");
    std::fs::remove_file(path("compressed/final/done")).unwrap();
    let requantized = ok(vitrine(&pipeline));
    assert_eq!(requantized.matches("unchanged since the last report").count(), 4, "{requantized}");
    assert!(!requantized.contains("int8 (final): unchanged") && !requantized.contains("ToMe r=2: unchanged"), "{requantized}");
    assert!(std::fs::read_to_string(path("compressed/report.html")).unwrap().contains("<svg"));
    let final_config = std::fs::read_to_string(path("compressed/final/config.json")).unwrap();
    assert!(final_config.contains("\"int8\""), "{final_config}");

    // Without pruning and fine-tuning, the distilled student goes straight to int8.
    let out = path("compressed-short");
    let mut short: Vec<&str> = pipeline.to_vec();
    let at = |flag: &str| short.iter().position(|a| *a == flag).unwrap() + 1;
    let (o, p) = (at("--out"), at("--prune-heads"));
    (short[o], short[p]) = (&out, "0");
    short.extend(["--finetune-epochs", "0"]);
    let report = ok(vitrine(&short));
    assert!(report.contains("| int8 (final) |") && !report.contains("| pruned |") && !report.contains("| fine-tuned |"), "{report}");

    // Distillation from cached frozen blocks, then a fine-tuning step that trains every block on images.
    let cached = path("compressed-cached");
    let report = ok(vitrine(&[
        "compress", "--teacher", &model, "--data", &data, "--out", &cached, "--student-layers", "0,1", "--prune-heads", "0",
        "--finetune-epochs", "1", "--finetune-frozen-blocks", "0", "--frozen-blocks", "1", "--cache-frozen", "--views", "1",
        "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--lr", "3e-3", "--head-only-epochs", "0", "--tome", "0",
    ]));
    assert!(report.contains("| fine-tuned |") && !report.contains("| pruned |"), "{report}");
    let recipe = |step: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("compressed-cached").join(step).join("recipe.json")).unwrap()).unwrap()
    };
    assert_eq!((recipe("distil")["frozen_blocks"].as_u64(), recipe("distil")["cache_frozen"].as_bool()), (Some(1), Some(true)));
    assert_eq!((recipe("finetune")["frozen_blocks"].as_u64(), recipe("finetune")["cache_frozen"].as_bool()), (Some(0), Some(false)));

    // A teacher whose labels are not the dataset's classes is refused.
    let wrong = vitrine(&["distill", "--teacher", &fixture, "--data", &data, "--out", &path("s2"), "--student-layers", "0"]);
    assert!(text(&wrong.stderr).contains("teacher's labels"), "{}", text(&wrong.stderr));
}
