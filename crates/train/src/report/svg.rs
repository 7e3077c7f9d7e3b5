//! Small, dependency-free SVG charts for the self-contained HTML reports: line charts, grouped
//! bars and a confusion-matrix heat map.

use std::fmt::Write;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 300.0;
const MARGIN: (f64, f64, f64, f64) = (48.0, 16.0, 28.0, 40.0); // left, right, top, bottom
/// Colour-blind-safe palette (Okabe-Ito).
pub const PALETTE: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// `text` safe inside HTML and SVG text and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// "Nice" tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| span / s <= count as f64).unwrap_or(raw);
    let mut out = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        format!("{v:.1e}")
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

/// A line chart with axes, ticks and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let points = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return format!("<p>{}: no data yet</p>", escape(title));
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    if y0 == y1 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = (y1 - y0) * 0.05;
    (y0, y1) = (y0 - pad, y1 + pad);
    let (left, right, top, bottom) = MARGIN;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (WIDTH - left - right);
    let sy = |y: f64| HEIGHT - bottom - (y - y0) / (y1 - y0) * (HEIGHT - top - bottom);
    let mut svg = format!(
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" aria-label="{t}"><text x="{left}" y="16" class="title">{t}</text>"#,
        t = escape(title)
    );
    for t in ticks(y0, y1, 5) {
        let y = sy(t);
        let _ = write!(svg, r#"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, WIDTH - right, left - 4.0, y + 4.0, label(t));
    }
    for t in ticks(x0, x1, 6) {
        let x = sx(t);
        let _ = write!(svg, r#"<text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#, HEIGHT - bottom + 14.0, label(t));
    }
    let _ = write!(svg, r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>"#, (left + WIDTH - right) / 2.0, HEIGHT - 6.0, escape(x_label));
    let _ = write!(svg, r#"<text x="12" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#, HEIGHT / 2.0, HEIGHT / 2.0, escape(y_label));
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(svg, r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.8"/>"#, path.join(" "));
        if s.points.len() <= 40 {
            for &(x, y) in &s.points {
                let _ = write!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"><title>{}: {}</title></circle>"#, sx(x), sy(y), label(x), label(y));
            }
        }
        let ly = top + 14.0 * i as f64 + 8.0;
        let _ = write!(svg, r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}" class="legend">{}</text>"#, WIDTH - right - 150.0, ly - 8.0, WIDTH - right - 136.0, ly + 1.0, escape(s.name));
    }
    svg.push_str("</svg>");
    svg
}

/// Grouped vertical bars in [0, 1]: one group per category, one bar per series.
pub fn grouped_bars(title: &str, categories: &[String], series: &[(&str, Vec<f64>)]) -> String {
    let (left, right, top) = (MARGIN.0, MARGIN.1, MARGIN.2);
    let bottom = 90.0;
    let height = HEIGHT + 40.0;
    let plot_h = height - top - bottom;
    let group_w = (WIDTH - left - right) / categories.len().max(1) as f64;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    let mut svg = format!(r#"<svg viewBox="0 0 {WIDTH} {height}" class="chart" role="img" aria-label="{t}"><text x="{left}" y="16" class="title">{t}</text>"#, t = escape(title));
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + plot_h * (1.0 - t);
        let _ = write!(svg, r#"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, WIDTH - right, left - 4.0, y + 4.0, label(t));
    }
    for (c, name) in categories.iter().enumerate() {
        let gx = left + group_w * c as f64 + group_w * 0.1;
        for (s, (series_name, values)) in series.iter().enumerate() {
            let v = values.get(c).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let h = plot_h * v;
            let _ = write!(svg, r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {}: {:.3}</title></rect>"#, gx + bar_w * s as f64, top + plot_h - h, bar_w, PALETTE[s % PALETTE.len()], escape(name), series_name, v);
        }
        let x = gx + group_w * 0.4;
        let y = top + plot_h + 8.0;
        let _ = write!(svg, r#"<text x="{x:.1}" y="{y:.1}" class="tick" text-anchor="end" transform="rotate(-40 {x:.1} {y:.1})">{}</text>"#, escape(name));
    }
    for (s, (name, _)) in series.iter().enumerate() {
        let x = WIDTH - right - 200.0 + 100.0 * s as f64;
        let _ = write!(svg, r#"<rect x="{x}" y="6" width="10" height="10" fill="{}"/><text x="{}" y="15" class="legend">{}</text>"#, PALETTE[s % PALETTE.len()], x + 14.0, escape(name));
    }
    svg.push_str("</svg>");
    svg
}

/// The confusion matrix as a heat map (rows: true class, columns: predicted), counts in the cells.
pub fn confusion(title: &str, classes: &[String], matrix: &[Vec<usize>]) -> String {
    let n = classes.len().max(1);
    let cell = (360.0 / n as f64).clamp(12.0, 40.0);
    let left = 130.0;
    let top = 40.0;
    let size = left + cell * n as f64 + 10.0;
    let height = top + cell * n as f64 + 120.0;
    let mut svg = format!(r#"<svg viewBox="0 0 {size} {height}" class="chart confusion" role="img" aria-label="{t}"><text x="4" y="16" class="title">{t}</text>"#, t = escape(title));
    for (r, row) in matrix.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        for (c, &count) in row.iter().enumerate() {
            let share = count as f64 / total as f64;
            let colour = if r == c { format!("rgba(0,114,178,{:.3})", 0.1 + 0.9 * share) } else { format!("rgba(213,94,0,{:.3})", (share * 3.0).min(1.0)) };
            let (x, y) = (left + cell * c as f64, top + cell * r as f64);
            let _ = write!(svg, r##"<rect x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{colour}" stroke="#fff"><title>true {} / predicted {}: {count}</title></rect>"##, escape(&classes[r]), escape(&classes[c]));
            if cell >= 22.0 && count > 0 {
                let _ = write!(svg, r#"<text x="{:.1}" y="{:.1}" class="cell" text-anchor="middle">{count}</text>"#, x + cell / 2.0, y + cell / 2.0 + 4.0);
            }
        }
        let _ = write!(svg, r#"<text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#, left - 4.0, top + cell * r as f64 + cell / 2.0 + 4.0, escape(&classes[r]));
    }
    for (c, name) in classes.iter().enumerate() {
        let x = left + cell * c as f64 + cell / 2.0;
        let y = top + cell * n as f64 + 8.0;
        let _ = write!(svg, r#"<text x="{x:.1}" y="{y:.1}" class="tick" text-anchor="end" transform="rotate(-50 {x:.1} {y:.1})">{}</text>"#, escape(name));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let labels = |t: Vec<f64>| t.into_iter().map(label).collect::<Vec<_>>();
        assert_eq!(labels(ticks(0.0, 1.0, 5)), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(labels(ticks(3.0, 47.0, 5)), ["10", "20", "30", "40"]);
    }

    #[test]
    fn charts_escape_text_and_plot_every_series() {
        let svg = line_chart("a<b", "x", "y", &[Series { name: "one", points: vec![(0.0, 1.0), (1.0, 2.0)] }, Series { name: "two", points: vec![(0.0, 0.5)] }]);
        assert!(svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(line_chart("t", "x", "y", &[]).contains("no data"));
    }
}
