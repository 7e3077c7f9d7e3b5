//! Image files from disk, for every native reader (predict, evaluation, training): regular files
//! only, of a bounded size, and a bound on the pixels being decoded at once across threads, so a
//! folder of decompression bombs costs one bomb's memory, not one per thread.

use std::io::Read;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use image::RgbImage;
use vitrine_model::decode::{MAX_PIXELS, decode_image, dimensions};

/// Largest image file read (a 108-megapixel JPEG is about 40 MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Pixels of the images being decoded and held right now, by every thread: at most one image of
/// [`MAX_PIXELS`] at a time, or many ordinary ones.
static IN_FLIGHT: Budget = Budget { used: Mutex::new(0), freed: Condvar::new() };

/// A decoded image, counted against [`IN_FLIGHT`] until it is dropped.
pub struct Decoded {
    image: RgbImage,
    _permit: Permit,
}

impl Deref for Decoded {
    type Target = RgbImage;

    fn deref(&self) -> &RgbImage {
        &self.image
    }
}

/// Reads and decodes the image file at `path` ([`decode_image`]); the error says what is wrong
/// with the file, not where it is (callers name the path).
pub fn read_image(path: &Path) -> Result<Decoded, String> {
    let bytes = read_file(path)?;
    let [width, height] = dimensions(&bytes).map_err(|e| e.to_string())?;
    let _permit = IN_FLIGHT.acquire(u64::from(width) * u64::from(height));
    let image = decode_image(&bytes).map_err(|e| e.to_string())?;
    Ok(Decoded { image, _permit })
}

/// The bytes of a regular file of at most [`MAX_FILE_BYTES`]. Anything else is refused before it
/// is opened: opening a FIFO waits for a writer, and `/dev/zero` never ends.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "not a regular file (a pipe, socket or device)" };
        return Err(format!("{kind}, not an image file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{} MB, larger than the {} MB an image file may have", meta.len() >> 20, MAX_FILE_BYTES >> 20));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("grew past the {} MB an image file may have while it was read", MAX_FILE_BYTES >> 20));
    }
    Ok(bytes)
}

struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    /// Waits until `pixels` fit beside the images in flight (an image alone always fits).
    fn acquire(&'static self, pixels: u64) -> Permit {
        let pixels = pixels.min(MAX_PIXELS);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + pixels > MAX_PIXELS {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += pixels;
        Permit { budget: self, pixels }
    }
}

struct Permit {
    budget: &'static Budget,
    pixels: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.budget.used.lock().unwrap_or_else(|e| e.into_inner()) -= self.pixels;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.jpg");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let err = read_image(&fifo).err().unwrap();
        assert!(err.contains("not a regular file"), "{err}");
        let err = read_image(Path::new("/dev/zero")).err().unwrap();
        assert!(err.contains("not a regular file"), "{err}");
        let err = read_image(dir.path()).err().unwrap();
        assert!(err.contains("a folder"), "{err}");
        let big = dir.path().join("big.png");
        std::fs::File::create(&big).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = read_image(&big).err().unwrap();
        assert!(err.contains("larger than the 256 MB"), "{err}");
    }

    #[test]
    fn the_budget_admits_one_large_image_at_a_time() {
        static BUDGET: Budget = Budget { used: Mutex::new(0), freed: Condvar::new() };
        let first = BUDGET.acquire(MAX_PIXELS - 10);
        let small = BUDGET.acquire(10);
        let waiter = std::thread::spawn(|| BUDGET.acquire(MAX_PIXELS / 2).pixels);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "must wait for the large image");
        drop(first);
        drop(small);
        assert_eq!(waiter.join().unwrap(), MAX_PIXELS / 2);
        assert_eq!(*BUDGET.used.lock().unwrap(), 0);
    }
}
