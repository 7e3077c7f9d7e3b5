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
    std::fs::create_dir(path("folder.jpg")).unwrap();
    let made = Command::new("mkfifo").arg(path("pipe.jpg")).status().unwrap();
    assert!(made.success());
    vec![
        (fixtures().join("images/tench.jpg").display().to_string(), true),
        (path("corrupt.jpg"), false),
        (path("deep.png"), true),
        (path("alpha.png"), true),
        (fixtures().join("images/cmyk.jpg").display().to_string(), true),
        (path("dot.png"), true),
        (path("notes.txt"), false),
        (path("missing.png"), false),
        (path("truncated.jpg"), false),
        (path("pipe.jpg"), false), // opening it would wait for a writer forever
        (path("folder.jpg"), false),
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
    assert!(stderr.contains("6 of 11 images could not be classified"), "{stderr}");
    assert!(stderr.contains("truncated.jpg: the JPEG file is cut short"), "{stderr}");
    assert!(stderr.contains("pipe.jpg: not a regular file"), "{stderr}");
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
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says) && stderr.contains("preprocessor_config.json"), "{json}: {stderr}");
    }
}

#[test]
fn a_photo_stored_rotated_is_classified_upright() {
    let dir = tempfile::tempdir().unwrap();
    // tench.jpg's pixels stored turned a quarter left, with EXIF orientation 6 ("turn right to view").
    let upright = image::open(fixtures().join("images/tench.jpg")).unwrap().into_rgb8();
    let stored = image::imageops::rotate270(&upright);
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 95).encode_image(&stored).unwrap();
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    exif.extend([0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]); // orientation = 6; no next IFD
    let mut rotated = plain[..2].to_vec();
    rotated.extend([0xFF, 0xE1]);
    rotated.extend(((exif.len() + 2) as u16).to_be_bytes());
    rotated.extend(&exif);
    rotated.extend(&plain[2..]);
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("rotated.jpg"), &rotated).unwrap();
    // The reference: the same decoded pixels, turned upright by hand, stored losslessly.
    let decoded = image::load_from_memory(&plain).unwrap().into_rgb8();
    image::imageops::rotate90(&decoded).save(path("upright.png")).unwrap();
    let model = fixtures().join("vit").display().to_string();
    let probs = |image: &str| -> Vec<f64> {
        let out = vitrine(&["predict", "--model", &model, "--json", "--top-k", "5", image], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut top: Vec<(u64, f64)> = json[0]["top"].as_array().unwrap().iter().map(|c| (c["index"].as_u64().unwrap(), c["prob"].as_f64().unwrap())).collect();
        top.sort_by_key(|c| c.0);
        top.into_iter().map(|c| c.1).collect()
    };
    assert_eq!(probs(&path("rotated.jpg")), probs(&path("upright.png")));
    std::fs::write(path("sideways.jpg"), &plain).unwrap();
    assert_ne!(probs(&path("sideways.jpg")), probs(&path("upright.png")), "the check can tell the two apart");
}

#[test]
fn token_merging_beyond_the_patches_is_refused() {
    let model = fixtures().join("vit").display().to_string();
    let image = fixtures().join("images/tench.jpg").display().to_string();
    let out = vitrine(&["predict", "--model", &model, "--tome", "99999", &image], None);
    assert_eq!(out.status.code(), Some(1));
    // 32 px inputs, 8 px patches: 16 patches over 2 blocks.
    assert!(text(&out.stderr).contains("token merging of 99999 pairs in each of 2 blocks needs more than the 16 patches of a 32x32 input: at most 7"), "{}", text(&out.stderr));
    assert!(vitrine(&["predict", "--model", &model, "--tome", "7", &image], None).status.success());
}

#[test]
#[allow(clippy::zombie_processes)] // the child is reaped by `wait4` (wait_with_peak_rss)
fn a_folder_of_decompression_bombs_costs_one_bomb_of_memory_at_a_time() {
    // PNGs of 11000 x 11000 grey pixels (under the 128 M pixel limit): 100 KB each on disk, 480 MB
    // each decoded (grey, then RGB). Four threads would hold four at once without the bound.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let side = 11_000;
    let bomb = {
        use image::ImageEncoder;
        let mut png = Vec::new();
        let zeros = vec![0u8; side * side];
        image::codecs::png::PngEncoder::new_with_quality(&mut png, image::codecs::png::CompressionType::Fast, image::codecs::png::FilterType::NoFilter)
            .write_image(&zeros, side as u32, side as u32, image::ExtendedColorType::L8)
            .unwrap();
        png
    };
    for (class, n) in [("tench", 0), ("tench", 1), ("church", 2), ("church", 3)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::write(data.join(class).join(format!("{n}.png")), &bomb).unwrap();
    }
    let model = fixtures().join("vit").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
        .args(["eval", "--model", &model, "--data", &data.display().to_string(), "--batch-size", "4"])
        .env("RAYON_NUM_THREADS", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (status, peak) = wait_with_peak_rss(child.id());
    let stderr = std::io::read_to_string(stderr).unwrap();
    assert!(status == 0, "{stderr}");
    let one_bomb = (side * side * 4) as u64;
    assert!(peak < one_bomb + one_bomb / 2, "peak RSS {} MB: more than one bomb ({} MB) decoded at once", peak >> 20, one_bomb >> 20);
    assert!(peak > one_bomb / 2, "peak RSS {} MB: the bomb was not decoded (the check would not see it)", peak >> 20);
}

/// Waits for child `pid`; its exit status and peak resident memory in bytes (Linux's `wait4`).
fn wait_with_peak_rss(pid: u32) -> (i32, u64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a child of this process, waited for once; both pointers are to locals.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid as libc::pid_t);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

#[test]
#[allow(clippy::zombie_processes)] // the child is reaped by `wait4` (wait_with_peak_rss)
fn a_config_far_larger_than_its_weights_fails_at_once_in_little_memory() {
    let image = fixtures().join("images/tench.jpg").display().to_string();
    let config = std::fs::read_to_string(fixtures().join("vit/config.json")).unwrap();
    for (from, to, says) in [
        ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000", "num_hidden_layers 1000000, the weights hold 2 blocks"),
        ("\"image_size\": 32", "\"image_size\": 100000", "the weights' position table is [1, 17, 32]"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.replace(from, to)).unwrap();
        std::fs::copy(fixtures().join("vit/model.safetensors"), dir.path().join("model.safetensors")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vitrine"))
            .args(["predict", "--model", &dir.path().display().to_string(), &image])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (status, peak) = wait_with_peak_rss(child.id());
        let stderr = std::io::read_to_string(child.stderr.unwrap()).unwrap();
        assert_eq!(status, 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        // Built first, these models took gigabytes before failing.
        assert!(peak < 200 << 20, "{to}: peak RSS {} MB", peak >> 20);
    }
}
