//! One overlay PNG: the photo, the photo under the map, and the colour bar.
//!
//! The map covers the part of the photo that the model input shows (its visible region after
//! resize and crop); outside it the photo is dimmed. Colours stretch from the map's minimum to its
//! maximum, as on the page, so that a nearly flat map (rollout) still shows its shape.

use std::path::Path;

use anyhow::{Context, Result};
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb, RgbImage};

/// Height of each panel in pixels.
const HEIGHT: u32 = 320;
const GAP: u32 = 8;
const BAR_WIDTH: u32 = 16;
/// How much of the colour covers the photo under the map.
const OPACITY: f32 = 0.55;

/// Writes the overlay of `map` (`grid` rows x cols, row-major) over `photo` to `path`.
pub fn write(path: &Path, photo: &RgbImage, map: &[f32], grid: [usize; 2], region: [f32; 4]) -> Result<()> {
    let width = (photo.width() as f32 * HEIGHT as f32 / photo.height() as f32).round().max(1.0) as u32;
    let shown = imageops::resize(photo, width, HEIGHT, FilterType::Triangle);
    let covered = overlay(&shown, map, grid, region);
    let mut out = RgbImage::from_pixel(2 * width + 2 * GAP + BAR_WIDTH, HEIGHT, Rgb([255, 255, 255]));
    imageops::replace(&mut out, &shown, 0, 0);
    imageops::replace(&mut out, &covered, i64::from(width + GAP), 0);
    imageops::replace(&mut out, &colour_bar(), i64::from(2 * (width + GAP)), 0);
    out.save(path).with_context(|| format!("cannot write {}", path.display()))
}

/// `photo` with the map blended over `region` (fractions `[left, top, right, bottom]`), dimmed outside.
fn overlay(photo: &RgbImage, map: &[f32], [rows, cols]: [usize; 2], [left, top, right, bottom]: [f32; 4]) -> RgbImage {
    let (min, max) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = if max - min > 1e-6 { max - min } else { 1.0 };
    let cells = ImageBuffer::from_fn(cols as u32, rows as u32, |x, y| Luma([(map[y as usize * cols + x as usize] - min) / span]));
    let (w, h) = (photo.width() as f32, photo.height() as f32);
    let (x0, y0) = ((left * w).round() as u32, (top * h).round() as u32);
    let (x1, y1) = ((right * w).round() as u32, (bottom * h).round() as u32);
    let smooth = imageops::resize(&cells, (x1 - x0).max(1), (y1 - y0).max(1), FilterType::Triangle);
    let mut out = photo.clone();
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
        pixel.0 = if inside {
            let colour = colour(smooth.get_pixel(x - x0, y - y0).0[0]);
            std::array::from_fn(|c| (f32::from(pixel.0[c]) * (1.0 - OPACITY) + f32::from(colour[c]) * OPACITY).round() as u8)
        } else {
            pixel.0.map(|v| v / 3)
        };
    }
    out
}

/// The colour scale, the map's maximum at the top.
fn colour_bar() -> RgbImage {
    ImageBuffer::from_fn(BAR_WIDTH, HEIGHT, |_, y| Rgb(colour(1.0 - y as f32 / (HEIGHT - 1) as f32)))
}

/// Inferno, as on the page.
fn colour(t: f32) -> [u8; 3] {
    let c = colorous::INFERNO.eval_continuous(f64::from(t.clamp(0.0, 1.0)));
    [c.r, c.g, c.b]
}
