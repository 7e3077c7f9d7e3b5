//! The GPU path (`--device wgpu`) against the CPU (`flex`), on the tiny fixtures: prediction,
//! evaluation and fine-tuning give the same numbers within f32 reduction-order noise. Built with
//! `--features wgpu`; CI runs it on Mesa's lavapipe, a software Vulkan driver, so the path a user
//! takes to a real GPU is known to work.
#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;

use common::{fixtures, ok, vitrine};

/// Probabilities and losses: f32 on both, summed in another order on the GPU.
const TOLERANCE: f64 = 1e-4;

fn json(output: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).unwrap()
}

#[test]
fn predict_on_the_gpu_matches_the_cpu() {
    let images = ["church.jpg", "parachute.jpg"].map(|name| fixtures().join("images").join(name).display().to_string());
    for model in ["vit", "deit", "dinov2"] {
        let model = fixtures().join(model).display().to_string();
        let run = |device: &str| {
            let mut args = vec!["predict", "--model", &model, "--json", "--top-k", "3", "--device", device];
            args.extend(images.iter().map(String::as_str));
            json(vitrine(&args))
        };
        let (cpu, gpu) = (run("cpu"), run("wgpu"));
        for (c, g) in cpu.as_array().unwrap().iter().zip(gpu.as_array().unwrap()) {
            for (a, b) in c["top"].as_array().unwrap().iter().zip(g["top"].as_array().unwrap()) {
                let (pa, pb) = (a["prob"].as_f64().unwrap(), b["prob"].as_f64().unwrap());
                assert!((pa - pb).abs() <= TOLERANCE, "{model}: cpu {a} vs wgpu {b}");
            }
        }
    }
}

#[test]
fn training_and_evaluation_on_the_gpu_match_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    vitrine_train::toy::write_shapes(&data, 8, 4, 9).unwrap();
    let data = data.display().to_string();
    // No augmentation, dropout or stochastic depth, and a start with its head already trained (a
    // new head is drawn from the device's random numbers, which differ between the two).
    let train = |model: &str, out: &str, device: &str| {
        let out = tmp.path().join(out).display().to_string();
        let args = [
            "train", "--model", &model, "--data", &data, "--out", &out, "--epochs", "2", "--batch-size", "8", "--image-size",
            "32", "--backbone-lr", "3e-3", "--no-augment", "--checkpoint-secs", "0", "--device", device,
        ];
        ok(vitrine(&args));
        vitrine_train::logbook::Logbook::new(Path::new(&out)).steps().unwrap()
    };
    train(&fixtures().join("vit").display().to_string(), "start", "cpu");
    let start = tmp.path().join("start/best").display().to_string();
    let (cpu, gpu) = (train(&start, "cpu", "cpu"), train(&start, "wgpu", "wgpu"));
    assert_eq!(cpu.len(), gpu.len());
    for (c, g) in cpu.iter().zip(&gpu) {
        // Each step feeds the next, so the noise grows with the steps: 1e-4 relative per step.
        let tolerance = TOLERANCE * c.step as f64 * c.loss.abs().max(1.0);
        assert!((c.loss - g.loss).abs() <= tolerance, "step {}: cpu loss {} vs wgpu {}", c.step, c.loss, g.loss);
    }
    let bundle = tmp.path().join("cpu/best").display().to_string();
    let eval = |device: &str| json(vitrine(&["eval", "--model", &bundle, "--data", &data, "--json", "--device", device]));
    let (cpu, gpu) = (eval("cpu"), eval("wgpu"));
    assert_eq!(cpu["n"], gpu["n"]);
    assert_eq!(cpu["confusion"], gpu["confusion"], "cpu {cpu} vs wgpu {gpu}");
}

/// Relevance through burn's autodiff on the GPU: the maps of `vitrine explain` match the CPU's
/// within 1e-5 (seen: 7e-7; 3.8e-4 before GELU's exact gradient off flex, `vitrine_kernels::gelu`).
#[test]
fn explain_on_the_gpu_matches_the_cpu() {
    let out = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/church.jpg").display().to_string();
    let mut worst = 0f64;
    for model in ["vit", "deit", "dinov2"] {
        let model = fixtures().join(model).display().to_string();
        let run = |device: &str| {
            let dir = out.path().join(device).display().to_string();
            json(vitrine(&["explain", "--model", &model, "--top", "5", "--out", &dir, "--json", "--device", device, &image]))
        };
        let (cpu, gpu) = (run("cpu"), run("wgpu"));
        for (c, g) in cpu.as_array().unwrap().iter().zip(gpu.as_array().unwrap()) {
            assert_eq!(c["class"], g["class"]);
            for (a, b) in c["map"].as_array().unwrap().iter().zip(g["map"].as_array().unwrap()) {
                worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
            }
        }
    }
    println!("relevance on wgpu against the cpu: {worst:.1e}");
    assert!(worst <= 1e-5, "relevance on wgpu differs from the cpu's by {worst}");
}
