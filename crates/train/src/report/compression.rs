//! The report of `vitrine compress`: every step's bundle beside the teacher, on the same
//! validation images (report.json, report.md, report.html).

use std::path::Path;

use anyhow::Result;

use super::svg::{self, escape};

/// One step of the pipeline, measured.
#[derive(serde::Serialize)]
pub struct Row {
    pub step: String,
    pub bundle: String,
    pub top1: f64,
    pub ms_per_image: f64,
    pub params: u64,
    pub bytes: u64,
    pub peak_rss_bytes: u64,
}

/// Writes the three files into `out`, the first row being the teacher's, and returns the Markdown.
/// `timing` says how latency was measured.
pub fn write(out: &Path, teacher: &str, images: usize, timing: &str, rows: &[Row]) -> Result<String> {
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(rows)?)?;
    let md = markdown(teacher, images, timing, rows);
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("report.html"), html(&md, rows))?;
    Ok(md)
}

fn markdown(teacher: &str, images: usize, timing: &str, rows: &[Row]) -> String {
    let base = &rows[0];
    let mut md = format!(
        "# Compression of `{teacher}`\n\nSame {images} validation images, same machine, one run (`vitrine compress`); latency: {timing}; peak memory: that process.\n\n| step | val top-1 | ms / image | speed-up | params (M) | size (MB) | smaller | peak memory (MB) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.2}% | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x | {:.0} |\n",
            r.step,
            100.0 * r.top1,
            r.ms_per_image,
            base.ms_per_image / r.ms_per_image,
            r.params as f64 / 1e6,
            r.bytes as f64 / 1e6,
            base.bytes as f64 / r.bytes.max(1) as f64,
            r.peak_rss_bytes as f64 / 1e6
        ));
    }
    md
}

fn html(md: &str, rows: &[Row]) -> String {
    let base = &rows[0];
    let categories: Vec<String> = rows.iter().map(|r| r.step.clone()).collect();
    let relative = |f: fn(&Row) -> f64| rows.iter().map(|r| f(r) / f(base)).collect::<Vec<_>>();
    format!(
        "<!doctype html><meta charset=utf-8><title>compression report</title><body style=\"font-family:sans-serif;max-width:1100px;margin:2rem auto\"><pre>{}</pre>{}</body>",
        escape(md),
        svg::grouped_bars(
            "Each step relative to the teacher (1 = teacher)",
            &categories,
            &[
                ("top-1", relative(|r| r.top1)),
                ("latency", relative(|r| r.ms_per_image)),
                ("size", relative(|r| r.bytes as f64)),
                ("peak memory", relative(|r| r.peak_rss_bytes as f64)),
            ],
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_command_line_are_escaped_in_the_html() {
        let row = |step: &str| Row { step: step.into(), bundle: "<b>".into(), top1: 0.9, ms_per_image: 2.0, params: 1, bytes: 4, peak_rss_bytes: 8 };
        let dir = tempfile::tempdir().unwrap();
        let md = write(dir.path(), "runs/<script>alert(1)</script>&", 10, "batch 1", &[row("teacher"), row("int8")]).unwrap();
        assert!(md.contains("| int8 | 90.00% | 2.00 | 1.00x |"), "{md}");
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;"), "{html}");
        assert!(html.contains("<svg"), "the plot is there");
    }
}
