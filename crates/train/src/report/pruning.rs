//! The report of `vitrine prune`: accuracy and latency at each pruning level (pruning.json,
//! pruning.html).

use std::path::Path;

use anyhow::Result;

use super::svg::{self, Series, escape};

/// One pruning level, measured.
#[derive(serde::Serialize)]
pub struct Level {
    pub heads_removed: usize,
    pub mlp_fraction: f64,
    pub params: usize,
    pub top1: f64,
    pub ms_per_image: f64,
}

/// Writes both files into `out`: `kept_heads` (per layer) of the chosen level, every level's row,
/// and the two curves, for the model named `model`.
pub fn write(out: &Path, model: &str, kept_heads: &[Vec<usize>], levels: &[Level]) -> Result<()> {
    let json = serde_json::json!({ "kept_heads": kept_heads, "levels": levels });
    std::fs::write(out.join("pruning.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(out.join("pruning.html"), html(model, levels))?;
    Ok(())
}

fn html(model: &str, levels: &[Level]) -> String {
    let curve = |f: fn(&Level) -> f64| vec![Series { name: "pruned", points: levels.iter().map(|r| (r.heads_removed as f64, f(r))).collect() }];
    format!(
        "<!doctype html><meta charset=utf-8><title>pruning curve</title><body style=\"font-family:sans-serif;max-width:1200px\"><h1>Head pruning of {}</h1>{}{}</body>",
        escape(model),
        svg::line_chart("Validation top-1 vs heads removed", "heads removed", "top-1", &curve(|r| r.top1)),
        svg::line_chart("Latency vs heads removed", "heads removed", "ms / image", &curve(|r| r.ms_per_image)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_escaped() {
        let level = |removed| Level { heads_removed: removed, mlp_fraction: 0.0, params: 10, top1: 0.5, ms_per_image: 1.0 };
        let html = html("hf:a/<img src=x onerror=alert(1)>", &[level(0), level(2)]);
        assert!(!html.contains("<img") && html.contains("&lt;img src=x onerror=alert(1)&gt;"), "{html}");
    }
}
