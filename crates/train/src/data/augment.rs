//! Training-time augmentation on decoded RGB images, as torchvision's usual fine-tuning recipe:
//! random resized crop, horizontal flip, small rotation, colour jitter. Each image draws from its
//! own RNG (seeded by run seed, epoch and sample), so results do not depend on thread scheduling.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// What to randomise; `Augment::none()` turns every part off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Range of the crop's area as a fraction of the image (torchvision's `scale`).
    pub crop_scale: (f32, f32),
    /// Range of the crop's aspect ratio (width / height).
    pub crop_ratio: (f32, f32),
    pub hflip: bool,
    /// Largest rotation, in degrees either way.
    pub rotation_deg: f32,
    /// Largest relative change of brightness, contrast and saturation.
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            crop_scale: (0.35, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            rotation_deg: 15.0,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
        }
    }
}

impl Augment {
    /// No augmentation: a plain resize of the whole image.
    pub fn none() -> Self {
        Self {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            hflip: false,
            rotation_deg: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }

    /// A `size` x `size` augmented view of `image`.
    pub fn apply(&self, image: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
        let (left, top, width, height) = self.crop_box(image.width(), image.height(), rng);
        let mut out = RgbImage::new(size, size);
        let options = ResizeOptions::new()
            .crop(left, top, width, height)
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        Resizer::new().resize(image, &mut out, &options).expect("RGB8 in, RGB8 out, both non-empty");
        if self.hflip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if self.rotation_deg > 0.0 {
            let degrees = rng.random_range(-self.rotation_deg..=self.rotation_deg);
            out = rotate_about_center(&out, degrees.to_radians(), Interpolation::Bilinear, Rgb([0, 0, 0]));
        }
        let factor = |rng: &mut dyn rand::RngCore, amount: f32| {
            if amount > 0.0 { rng.random_range(1.0 - amount..=1.0 + amount) } else { 1.0 }
        };
        let (b, c, s) = (factor(rng, self.brightness), factor(rng, self.contrast), factor(rng, self.saturation));
        if (b, c, s) != (1.0, 1.0, 1.0) {
            jitter(&mut out, b, c, s);
        }
        out
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and ratio, then the
    /// largest centred crop within the ratio range.
    fn crop_box(&self, width: u32, height: u32, rng: &mut impl Rng) -> (f64, f64, f64, f64) {
        let (w, h) = (f64::from(width), f64::from(height));
        let (lo, hi) = (f64::from(self.crop_ratio.0).ln(), f64::from(self.crop_ratio.1).ln());
        if self.crop_scale != (1.0, 1.0) {
            for _ in 0..10 {
                let area = w * h * rng.random_range(f64::from(self.crop_scale.0)..=f64::from(self.crop_scale.1));
                let ratio = if lo < hi { rng.random_range(lo..hi).exp() } else { lo.exp() };
                let (cw, ch) = ((area * ratio).sqrt().round(), (area / ratio).sqrt().round());
                if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
                    let left = rng.random_range(0.0..=w - cw).floor();
                    let top = rng.random_range(0.0..=h - ch).floor();
                    return (left, top, cw, ch);
                }
            }
        }
        let ratio = w / h;
        let (cw, ch) = if ratio < f64::from(self.crop_ratio.0) {
            (w, (w / f64::from(self.crop_ratio.0)).round())
        } else if ratio > f64::from(self.crop_ratio.1) {
            ((h * f64::from(self.crop_ratio.1)).round(), h)
        } else {
            (w, h)
        };
        (((w - cw) / 2.0).floor(), ((h - ch) / 2.0).floor(), cw, ch)
    }
}

/// torchvision's colour jitter (fixed order): brightness scales, contrast blends with the mean
/// grey level, saturation blends each pixel with its own grey.
fn jitter(image: &mut RgbImage, brightness: f32, contrast: f32, saturation: f32) {
    let grey = |p: [f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    let mut pixels: Vec<[f32; 3]> =
        image.pixels().map(|p| p.0.map(|v| clamp(f32::from(v) * brightness))).collect();
    let mean = pixels.iter().map(|&p| grey(p)).sum::<f32>() / pixels.len().max(1) as f32;
    for p in &mut pixels {
        *p = p.map(|v| clamp((v - mean) * contrast + mean));
        let g = grey(*p);
        *p = p.map(|v| clamp((v - g) * saturation + g));
    }
    for (out, p) in image.pixels_mut().zip(pixels) {
        out.0 = p.map(|v| v.round() as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn same_seed_same_view_and_right_size() {
        let aug = Augment::default();
        let a = aug.apply(&gradient(), 32, &mut ChaCha8Rng::seed_from_u64(1));
        let b = aug.apply(&gradient(), 32, &mut ChaCha8Rng::seed_from_u64(1));
        let c = aug.apply(&gradient(), 32, &mut ChaCha8Rng::seed_from_u64(2));
        assert_eq!(a.dimensions(), (32, 32));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn none_is_a_plain_resize() {
        let image = RgbImage::from_pixel(40, 40, Rgb([10, 200, 30]));
        let out = Augment::none().apply(&image, 20, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 30]));
    }

    #[test]
    fn crop_stays_inside_the_image() {
        let aug = Augment::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let (l, t, w, h) = aug.crop_box(300, 100, &mut rng);
            assert!(l >= 0.0 && t >= 0.0 && w >= 1.0 && h >= 1.0 && l + w <= 300.0 && t + h <= 100.0);
        }
    }
}
