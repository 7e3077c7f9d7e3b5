//! The `vitrine` binary end to end, on the committed tiny fixtures.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, text};

/// `vitrine` with an optional Hugging Face cache and an unreachable hub.
fn vitrine(args: &[&str], hf_home: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitrine"));
    cmd.args(args).env_remove("RUST_BACKTRACE");
    if let Some(home) = hf_home {
        cmd.env("HF_HOME", home).env("HF_ENDPOINT", "http://127.0.0.1:9");
    }
    cmd.output().unwrap()
}

/// Odd but valid images and broken files, written into `dir`.
fn image_zoo(dir: &Path) -> Vec<(String, bool)> {
    let path = |name: &str| dir.join(name).display().to_string();
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(40, 30, |x, y| image::Rgb([x as u16 * 1600, y as u16 * 2000, 30000]));
    rgb16.save(path("deep.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(33, 47, |x, y| image::Rgba([x as u8 * 7, y as u8 * 5, 90, (x * 3) as u8]));
    rgba.save(path("alpha.png")).unwrap();
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 10, 10])).save(path("dot.png")).unwrap();
    std::fs::write(path("corrupt.jpg"), b"\xff\xd8\xff\xe0 this is not really a JPEG").unwrap();
    let tench = std::fs::read(fixtures().join("images/tench.jpg")).unwrap();
    std::fs::write(path("truncated.jpg"), &tench[..tench.len() / 3]).unwrap();
    std::fs::write(path("notes.txt"), "hello").unwrap();
    vec![
        (fixtures().join("images/tench.jpg").display().to_string(), true),
        (path("corrupt.jpg"), false),
        (path("deep.png"), true),
        (path("alpha.png"), true),
        (fixtures().join("images/cmyk.jpg").display().to_string(), true),
        (path("dot.png"), true),
        (path("notes.txt"), false),
        (path("missing.png"), false),
    ]
}

#[test]
fn predict_answers_for_good_images_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let zoo = image_zoo(dir.path());
    let model = fixtures().join("vit").display().to_string();
    let mut args = vec!["predict", "--model", &model, "--json", "--top-k", "3"];
    args.extend(zoo.iter().map(|(p, _)| p.as_str()));
    let out = vitrine(&args, None);
    assert!(!out.status.success(), "bad images make the exit status fail");
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), zoo.len());
    let stderr = text(&out.stderr);
    for ((path, good), result) in zoo.iter().zip(results) {
        assert_eq!(result["image"], path.as_str());
        if *good {
            let top = result["top"].as_array().unwrap_or_else(|| panic!("{path}: {result}"));
            assert_eq!(top.len(), 3);
            let probs: Vec<f64> = top.iter().map(|c| c["prob"].as_f64().unwrap()).collect();
            assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] > 0.0 && probs[0] <= 1.0);
            assert!(top[0]["label"].is_string() && top[0]["index"].as_u64().unwrap() < 5);
        } else {
            assert!(result["error"].is_string(), "{path}: {result}");
            assert!(stderr.contains(&format!("error: {path}: ")), "stderr names {path}: {stderr}");
        }
    }
    assert!(stderr.contains("3 of 8 images could not be classified"), "{stderr}");
}

#[test]
fn predict_matches_the_library_on_a_photo() {
    let model = fixtures().join("deit").display().to_string();
    let image = fixtures().join("images/church.jpg").display().to_string();
    let out = vitrine(&["predict", "--model", &model, "--json", &image], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // transformers' probabilities for this photo (tests/fixtures/deit/pipeline.json), within the pipeline tolerance.
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("deit/pipeline.json")).unwrap()).unwrap();
    let case = reference.as_array().unwrap().iter().find(|c| c["image"] == "images/church.jpg").unwrap();
    for class in results[0]["top"].as_array().unwrap() {
        let index = class["index"].as_u64().unwrap() as usize;
        let expected = case["probs"][index].as_f64().unwrap();
        assert!((class["prob"].as_f64().unwrap() - expected).abs() < 2e-3, "{class} vs {expected}");
    }
}

#[test]
fn inspect_describes_the_model() {
    let model = fixtures().join("deit").display().to_string();
    let out = vitrine(&["inspect", "--model", &model], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("family      deit"), "{stdout}");
    assert!(stdout.contains("linear + distillation head, 5 classes"), "{stdout}");
    assert!(stdout.contains("labels      tench, church, parachute, golf_ball, gas_pump"), "{stdout}");
}

#[test]
fn a_backbone_cannot_predict() {
    let model = fixtures().join("dinov2_backbone").display().to_string();
    let image = fixtures().join("images/tench.jpg").display().to_string();
    let out = vitrine(&["predict", "--model", &model, &image], None);
    assert!(text(&out.stderr).contains("is a backbone without a classifier"), "{}", text(&out.stderr));
}

#[test]
fn hub_models_load_from_the_cache_without_network() {
    let home = tempfile::tempdir().unwrap();
    let snapshot = home.path().join("hub/models--vitrine--tiny-vit/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(home.path().join("hub/models--vitrine--tiny-vit/refs")).unwrap();
    std::fs::write(home.path().join("hub/models--vitrine--tiny-vit/refs/main"), "0123abcd").unwrap();
    for file in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(fixtures().join("vit").join(file), snapshot.join(file)).unwrap();
    }
    let image = fixtures().join("images/tench.jpg").display().to_string();
    let out = vitrine(&["predict", "--model", "hf:vitrine/tiny-vit", "--json", &image], Some(home.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Pinned to a revision: the snapshot its ref names; another revision is not in the cache.
    std::fs::write(home.path().join("hub/models--vitrine--tiny-vit/refs/v1.0"), "0123abcd").unwrap();
    let out = vitrine(&["predict", "--model", "hf:vitrine/tiny-vit@v1.0", "--json", &image], Some(home.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vitrine(&["predict", "--model", "hf:vitrine/tiny-vit@v2.0", &image], Some(home.path()));
    assert!(text(&out.stderr).contains("cannot download config.json of hf:vitrine/tiny-vit@v2.0"), "{}", text(&out.stderr));

    // Not cached, and the (unreachable) hub refuses: a fast, clear error.
    let start = std::time::Instant::now();
    let out = vitrine(&["predict", "--model", "hf:vitrine/absent", &image], Some(home.path()));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot download config.json of hf:vitrine/absent"), "{stderr}");
    assert!(start.elapsed().as_secs() < 30, "offline failure took {:?}", start.elapsed());
    let out = vitrine(&["inspect", "--model", "hf:not-a-repo"], Some(home.path()));
    assert!(text(&out.stderr).contains("is not of the form hf:ORG/NAME"), "{}", text(&out.stderr));
}

#[test]
fn bench_times_each_model_and_token_merging_setting_in_one_run() {
    let (vit, deit) = (fixtures().join("vit").display().to_string(), fixtures().join("deit").display().to_string());
    let out = vitrine(&["bench", "--model", &vit, "--model", &deit, "--tome", "0,3", "--iters", "2", "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, [vit.clone(), format!("{vit} (ToMe r=3)"), deit.clone(), format!("{deit} (ToMe r=3)")]);
    for row in rows {
        assert!(row["ms_per_image"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["params"].as_u64().unwrap() > 1000 && row["bytes"].as_u64().unwrap() > 4000, "{row}");
    }
    assert_eq!(rows[0]["params"], rows[1]["params"], "merging tokens removes no parameter");
    let refused = vitrine(&["bench", "--model", "/nonexistent/model", "--json"], None);
    assert!(!refused.status.success() && text(&refused.stderr).contains("/nonexistent/model"), "{}", text(&refused.stderr));
}

#[test]
fn a_preprocessor_smaller_than_a_patch_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("vit").join(file), dir.path().join(file)).unwrap();
    }
    let image = fixtures().join("images/tench.jpg").display().to_string();
    let model = dir.path().display().to_string();
    for (json, says) in [(r#"{"size": 4}"#, "smaller than the model's 8 px patches"), (r#"{"size": 4294967297}"#, "each side must be 1 to 16384 pixels")] {
        std::fs::write(dir.path().join("preprocessor_config.json"), json).unwrap();
        let out = vitrine(&["predict", "--model", &model, &image], None);
        assert_eq!(out.status.code(), Some(1), "{json}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{json}: {}", text(&out.stderr));
    }
}
