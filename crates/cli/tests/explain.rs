//! `vitrine explain` and `vitrine faithfulness` on the committed tiny fixtures.

mod common;

use burn::tensor::Device;
use common::{fixtures, ok, text, vitrine};
use vitrine_model::decode::decode_image;
use vitrine_model::explain::{for_gradients, relevance};
use vitrine_model::{PreprocessConfig, load_safetensors};

fn path(p: std::path::PathBuf) -> String {
    p.display().to_string()
}

/// The relevance maps printed are the library's on the same photo, class by class, and each
/// image and class gets an overlay PNG in the gallery; an unreadable image is named and the others
/// are still explained.
#[test]
fn explain_prints_the_librarys_relevance_and_writes_a_gallery() {
    let out = tempfile::tempdir().unwrap();
    let broken = out.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff not a JPEG").unwrap();
    let (model, church, tench) = (path(fixtures().join("vit")), path(fixtures().join("images/church.jpg")), path(fixtures().join("images/tench.jpg")));
    let dir = path(out.path().join("maps"));
    let run = vitrine(&["explain", "--model", &model, "--top", "2", "--out", &dir, "--json", &church, &path(broken.clone()), &tench]);
    assert!(!run.status.success(), "an unreadable image fails the run");
    assert!(text(&run.stderr).contains("1 of 3 images could not be explained"), "{}", text(&run.stderr));
    let maps: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let maps = maps.as_array().unwrap();
    assert_eq!(maps.len(), 4, "two classes for each readable image");

    let device = Device::flex();
    let dir_of = fixtures().join("vit");
    let loaded = load_safetensors(&std::fs::read_to_string(dir_of.join("config.json")).unwrap(), &std::fs::read(dir_of.join("model.safetensors")).unwrap(), &device).unwrap();
    let preprocess = PreprocessConfig::from_json(&std::fs::read_to_string(dir_of.join("preprocessor_config.json")).unwrap()).unwrap();
    let gradients = for_gradients(&loaded.model);
    for entry in maps {
        assert_eq!(entry["method"], "relevance");
        assert_eq!(entry["grid"], serde_json::json!([4, 4]));
        let image = entry["image"].as_str().unwrap();
        let class = loaded.labels.iter().position(|l| l == entry["class"].as_str().unwrap()).unwrap();
        let pixels = preprocess.batch(&[decode_image(&std::fs::read(image).unwrap()).unwrap()], &device).unwrap();
        let want: Vec<f32> = relevance(&gradients, pixels.autodiff(), &[class]).into_data().try_to_vec().unwrap();
        let got: Vec<f32> = entry["map"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff <= 1e-6, "{image} {class}: {diff}");
        assert!(got.contains(&1.0) && got.iter().all(|&v| (0.0..=1.0).contains(&v)), "peak-normalised: {got:?}");
    }
    assert_ne!(maps[0]["map"], maps[1]["map"], "the map depends on the class");
    let pngs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 4, "{pngs:?}");
    let gallery = std::fs::read_to_string(out.path().join("maps/index.html")).unwrap();
    for png in &pngs {
        assert!(gallery.contains(png.as_str()), "the gallery shows {png}");
        let image = image::open(out.path().join("maps").join(png)).unwrap();
        assert_eq!(image.height(), 320);
    }
}

#[test]
fn explain_takes_a_class_by_name_and_the_attention_maps() {
    let out = tempfile::tempdir().unwrap();
    let (model, church) = (path(fixtures().join("vit")), path(fixtures().join("images/church.jpg")));
    let dir = path(out.path().to_path_buf());
    let json = ok(vitrine(&["explain", "--model", &model, "--class", "gas_pump", "--method", "mask:1.2", "--out", &dir, "--json", &church]));
    let maps: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((maps[0]["class"].as_str(), maps[0]["method"].as_str()), (Some("gas_pump"), Some("mask:1.2")));
    let mask: Vec<f64> = maps[0]["map"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0) && mask.contains(&1.0), "{mask:?}");
    let rollout = ok(vitrine(&["explain", "--model", &model, "--top", "3", "--method", "rollout", "--out", &dir, "--json", &church]));
    let rollout: serde_json::Value = serde_json::from_str(&rollout).unwrap();
    assert_eq!(rollout[0]["map"], rollout[2]["map"], "a class-agnostic map is the same for every class");

    let refused = |args: &[&str], says: &str| {
        let mut all = vec!["explain", "--model", &model, "--out", &dir];
        all.extend(args);
        all.push(church.as_str());
        let run = vitrine(&all);
        assert!(!run.status.success() && text(&run.stderr).contains(says), "{args:?}: {}", text(&run.stderr));
    };
    refused(&["--class", "zebra"], "--class zebra: the model has no such label; its labels are tench, church");
    refused(&["--method", "head:2.0"], "the model has layers 0 to 1");
    refused(&["--method", "mask:0.4"], "layer 0 has heads 0 to 3");
    refused(&["--method", "saliency"], "unknown method saliency");
    let backbone = path(fixtures().join("dinov2_backbone"));
    let run = vitrine(&["explain", "--model", &backbone, "--out", &dir, &church]);
    assert!(text(&run.stderr).contains("a backbone without a classifier"), "{}", text(&run.stderr));
}

/// The curves' mechanics on a three-photo folder: every explainer, both tests, the same accuracy
/// before any patch is blanked, accuracies and areas in [0, 1].
#[test]
fn faithfulness_gives_both_curves_for_every_map() {
    let data = tempfile::tempdir().unwrap();
    for class in ["tench", "church", "parachute"] {
        std::fs::create_dir(data.path().join(class)).unwrap();
        std::fs::copy(fixtures().join(format!("images/{class}.jpg")), data.path().join(class).join("a.jpg")).unwrap();
    }
    let (model, root) = (path(fixtures().join("vit")), path(data.path().to_path_buf()));
    let json = ok(vitrine(&["faithfulness", "--model", &model, "--data", &root, "--steps", "4", "--json"]));
    let result: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(result["images"], 3);
    assert_eq!(result["fractions"], serde_json::json!([0.0, 0.25, 0.5, 0.75]));
    let curves = result["curves"].as_array().unwrap();
    let names: Vec<&str> = curves.iter().map(|c| c["explainer"].as_str().unwrap()).collect();
    assert_eq!(names, ["relevance", "rollout", "last-layer mean", "random"]);
    let start = curves[0]["positive"][0].as_f64().unwrap();
    for curve in curves {
        for test in ["positive", "negative"] {
            let points: Vec<f64> = curve[test].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(points.len(), 4);
            assert_eq!(points[0], start, "nothing blanked yet");
            assert!(points.iter().all(|p| (0.0..=1.0).contains(p)));
            let auc = curve[&format!("{test}_auc")].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&auc));
        }
    }
    let run = vitrine(&["faithfulness", "--model", &model, "--data", &root, "--steps", "1"]);
    assert!(text(&run.stderr).contains("at least 2 steps"), "{}", text(&run.stderr));
}
