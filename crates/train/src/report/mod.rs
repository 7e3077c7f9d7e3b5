//! A run's report: one self-contained HTML file (inline SVG plots, embedded thumbnails) that a
//! person can open in any browser, rebuilt from the run folder's JSON files at any time.

pub mod compression;
pub mod pruning;
pub mod svg;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;

use crate::checkpoint::{read_if_present, write_atomic};
use crate::logbook::{EpochRecord, Logbook, StepRecord};
use crate::recipe::Recipe;
use crate::run_dir::RunDir;
use svg::{Series, escape};

/// What the report reads from a run folder.
struct RunData {
    name: String,
    recipe: Option<Recipe>,
    classes: Vec<String>,
    steps: Vec<StepRecord>,
    epochs: Vec<EpochRecord>,
}

impl RunData {
    fn read(dir: &Path) -> Result<Self> {
        // Either file may be absent (a folder that is not a run of ours yet), but one that is there
        // and does not parse is an error, not an empty section.
        let run = RunDir(dir.to_path_buf());
        let read = |path: PathBuf| -> Result<Option<String>> {
            let bytes = read_if_present(&path)?;
            bytes.map(|b| String::from_utf8(b).with_context(|| format!("{} is not UTF-8", path.display()))).transpose()
        };
        let recipe = match read(run.recipe())? {
            Some(text) => Some(Recipe::from_json(&text).with_context(|| format!("{} does not parse", run.recipe().display()))?),
            None => None,
        };
        let classes = match read(run.model_config())? {
            Some(text) => vitrine_model::HfVitConfig::from_json(&text)
                .and_then(|c| c.labels())
                .map_err(|e| anyhow::anyhow!("{}: {e}", run.model_config().display()))?,
            None => Vec::new(),
        };
        let logbook = Logbook::new(dir);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        Ok(Self { name, recipe, classes, steps: logbook.steps()?, epochs: logbook.epochs()? })
    }

    fn best(&self) -> Option<&EpochRecord> {
        self.epochs.iter().max_by(|a, b| a.val.top1.total_cmp(&b.val.top1).then(b.epoch.cmp(&a.epoch)))
    }

    fn seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.seconds).sum()
    }
}

/// Writes `RUN_DIR/report.html`; `compare` adds other runs' curves and a side-by-side table.
pub fn write_with(run_dir: &Path, compare: &[PathBuf]) -> Result<PathBuf> {
    let run = RunData::read(run_dir).with_context(|| format!("reading the run in {}", run_dir.display()))?;
    let others = compare.iter().map(|d| RunData::read(d)).collect::<Result<Vec<_>>>()?;
    let html = render(&run, &others);
    let path = run_dir.join("report.html");
    write_atomic(&path, html.as_bytes())?;
    Ok(path)
}

/// Writes `RUN_DIR/report.html` for one run.
pub fn write(run_dir: &Path) -> Result<PathBuf> {
    write_with(run_dir, &[])
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// Moving average over `window` points, for a readable per-step loss curve.
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let from = i.saturating_sub(window - 1);
            let slice = &points[from..=i];
            (x, slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64)
        })
        .collect()
}

fn render(run: &RunData, others: &[RunData]) -> String {
    let mut html = String::from(HEAD);
    let _ = write!(html, "<h1>Run <code>{}</code></h1>", escape(&run.name));
    match run.best() {
        Some(best) => {
            let _ = write!(
                html,
                r#"<p class="summary">Best validation top-1 <b id="best-top1" data-value="{}">{}</b> (top-5 {}) at epoch {} of {}; {:.1} min of training, {:.1} images/s in the last epoch.</p>"#,
                best.val.top1,
                pct(best.val.top1),
                pct(best.val.top5),
                best.epoch + 1,
                run.epochs.len(),
                run.seconds() / 60.0,
                run.epochs.last().map_or(0.0, |e| e.images_per_s)
            );
        }
        None => html.push_str("<p class=\"summary\">No epoch has finished yet.</p>"),
    }

    // Curves.
    let step_loss: Vec<(f64, f64)> = run.steps.iter().map(|s| (s.step as f64, s.loss)).collect();
    let window = (step_loss.len() / 50).clamp(1, 50);
    let epoch_x = |e: &EpochRecord| e.step as f64;
    html.push_str("<h2>Training curves</h2><div class=\"grid\">");
    html.push_str(&svg::line_chart(
        "Loss",
        "optimizer step",
        "cross-entropy",
        &[
            Series { name: "train (smoothed)", points: smooth(&step_loss, window) },
            Series { name: "val", points: run.epochs.iter().map(|e| (epoch_x(e), e.val.loss)).collect() },
        ],
    ));
    html.push_str(&svg::line_chart(
        "Accuracy",
        "optimizer step",
        "top-1",
        &[
            Series { name: "train (epoch)", points: run.epochs.iter().map(|e| (epoch_x(e), e.train_accuracy)).collect() },
            Series { name: "val top-1", points: run.epochs.iter().map(|e| (epoch_x(e), e.val.top1)).collect() },
            Series { name: "val top-5", points: run.epochs.iter().map(|e| (epoch_x(e), e.val.top5)).collect() },
        ],
    ));
    html.push_str(&svg::line_chart(
        "Learning rate (head; blocks lower under layer-wise decay)",
        "optimizer step",
        "lr",
        &[Series { name: "head lr", points: run.steps.iter().map(|s| (s.step as f64, s.lr)).collect() }],
    ));
    html.push_str(&svg::line_chart(
        "Throughput",
        "optimizer step",
        "images / s",
        &[Series { name: "train", points: smooth(&run.steps.iter().map(|s| (s.step as f64, s.images_per_s)).collect::<Vec<_>>(), window) }],
    ));
    html.push_str("</div>");

    // The best epoch in detail.
    if let Some(best) = run.best() {
        let classes = if run.classes.len() == best.val.confusion.len() {
            run.classes.clone()
        } else {
            (0..best.val.confusion.len()).map(|i| i.to_string()).collect()
        };
        let _ = write!(html, "<h2>Validation at the best epoch ({} images)</h2><div class=\"grid\">", best.val.n);
        html.push_str(&svg::grouped_bars(
            "Per-class precision and recall",
            &classes,
            &[("precision", best.val.precision()), ("recall", best.val.recall())],
        ));
        html.push_str(&svg::confusion("Confusion matrix (rows: true class)", &classes, &best.val.confusion));
        html.push_str("</div><h2>Worst-classified validation images</h2><div class=\"worst\">");
        for miss in &best.val.worst {
            let name = |i: usize| escape(classes.get(i).map_or("", String::as_str));
            let image = miss.path.as_deref().and_then(thumbnail).unwrap_or_default();
            let _ = write!(
                html,
                r#"<figure><img src="{image}" alt=""><figcaption>true <b>{}</b><br>predicted <b>{}</b><br>p(true) = {:.3}</figcaption></figure>"#,
                name(miss.label),
                name(miss.predicted),
                miss.true_prob
            );
        }
        html.push_str("</div>");
    }

    // Epoch table.
    html.push_str("<h2>Epochs</h2><table><tr><th>epoch</th><th>blocks trained</th><th>train loss</th><th>train acc</th><th>val loss</th><th>val top-1</th><th>val top-5</th><th>s</th><th>img/s</th></tr>");
    for e in &run.epochs {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.1}</td></tr>",
            e.epoch + 1, e.trainable_blocks, e.train_loss, pct(e.train_accuracy), e.val.loss, pct(e.val.top1), pct(e.val.top5), e.seconds, e.images_per_s
        );
    }
    html.push_str("</table>");

    // Side by side with other runs.
    if !others.is_empty() {
        let all: Vec<&RunData> = std::iter::once(run).chain(others).collect();
        html.push_str("<h2>Compared runs</h2><div class=\"grid\">");
        let curve = |f: fn(&EpochRecord) -> f64| -> Vec<Series> {
            all.iter().map(|r| Series { name: &r.name, points: r.epochs.iter().map(|e| ((e.epoch + 1) as f64, f(e))).collect() }).collect()
        };
        html.push_str(&svg::line_chart("Validation top-1", "epoch", "top-1", &curve(|e| e.val.top1)));
        html.push_str(&svg::line_chart("Validation loss", "epoch", "cross-entropy", &curve(|e| e.val.loss)));
        html.push_str("</div><table><tr><th>run</th><th>best val top-1</th><th>epochs</th><th>minutes</th>");
        let keys = ["image_size", "epochs", "batch_size", "lr", "layer_decay", "frozen_blocks", "views", "head_only_epochs", "unfreeze_per_epoch", "weight_decay", "label_smoothing", "seed"];
        for key in keys {
            let _ = write!(html, "<th>{key}</th>");
        }
        html.push_str("</tr>");
        for r in &all {
            let recipe = r.recipe.as_ref().and_then(|rc| serde_json::to_value(rc).ok()).unwrap_or_default();
            let _ = write!(html, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td>", escape(&r.name), r.best().map_or("-".into(), |b| pct(b.val.top1)), r.epochs.len(), r.seconds() / 60.0);
            for key in keys {
                let _ = write!(html, "<td>{}</td>", escape(&recipe.get(key).map_or("-".into(), |v| v.to_string())));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>");
    }

    // The recipe.
    if let Some(recipe) = &run.recipe {
        let _ = write!(html, "<h2>Recipe</h2><pre>{}</pre>", escape(&serde_json::to_string_pretty(recipe).unwrap_or_default()));
    }
    html.push_str("</body></html>\n");
    html
}

/// A small JPEG of an image file as a data URL.
fn thumbnail(path: &str) -> Option<String> {
    let image = crate::data::image_file::read_image(std::path::Path::new(path)).ok()?;
    let small = image::imageops::thumbnail(&*image, 128, 128);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&small).ok()?;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(out)))
}

const HEAD: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vitrine run report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2430}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.summary{font-size:1.05rem}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}
.chart{width:100%;background:#fafbfc;border:1px solid #e3e6ea;border-radius:6px}
.chart .title{font-weight:600;font-size:13px}.chart .tick{font-size:10px;fill:#555}.chart .axis{font-size:11px;fill:#333}
.chart .legend{font-size:11px}.chart .grid{stroke:#e6e8eb}.chart .cell{font-size:10px;fill:#111}
table{border-collapse:collapse;font-size:13px;margin-top:.5rem}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
.worst{display:flex;flex-wrap:wrap;gap:.6rem}.worst figure{margin:0;width:128px;font-size:11px}.worst img{width:128px;height:128px;object-fit:cover;border-radius:4px}
pre{background:#f5f6f8;padding:.8rem;border-radius:6px;font-size:12px}
</style></head><body>
"#;
