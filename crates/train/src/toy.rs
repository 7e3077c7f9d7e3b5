//! A toy ImageFolder dataset drawn on the fly (a red disc, a green square, a blue bar on grey
//! noise, at random places and sizes): tests and demos train on it in seconds.

use std::path::Path;

use anyhow::Result;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Class folder names, in the order of [`shape`]'s `class`.
pub const CLASSES: [&str; 3] = ["disc", "square", "bar"];

/// One 48 x 48 image of `class`.
pub fn shape(class: usize, rng: &mut impl Rng) -> RgbImage {
    let (cx, cy, r) = (rng.random_range(14..34), rng.random_range(14..34), rng.random_range(6..12));
    let colour = [Rgb([220, 40, 40]), Rgb([40, 200, 60]), Rgb([50, 70, 230])][class];
    let noise: Vec<u8> = (0..48 * 48).map(|_| rng.random_range(90..160)).collect();
    RgbImage::from_fn(48, 48, |x, y| {
        let (dx, dy) = (x as i32 - cx, y as i32 - cy);
        let inside = match class {
            0 => dx * dx + dy * dy <= r * r,
            1 => dx.abs() <= r && dy.abs() <= r,
            _ => dx.abs() <= r && dy.abs() <= r / 3,
        };
        if inside {
            colour
        } else {
            let g = noise[(y * 48 + x) as usize];
            Rgb([g, g, g])
        }
    })
}

/// Writes `root/{train,val}/<class>/NNN.png` with `train` and `val` images per class.
pub fn write_shapes(root: &Path, train: usize, val: usize, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (split, n) in [("train", train), ("val", val)] {
        for (class, name) in CLASSES.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir)?;
            for i in 0..n {
                shape(class, &mut rng).save(dir.join(format!("{i:03}.png")))?;
            }
        }
    }
    Ok(())
}
