//! Image files to 8-bit RGB, as transformers' `load_image` reads them (PIL: `exif_transpose`, then
//! `convert("RGB")`), with the checks a file from anywhere needs: sizes read from the header before
//! any pixel is decoded, and a JPEG cut short refused rather than completed with grey.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::ImageError;

/// Largest image side accepted.
pub const MAX_SIDE: u32 = 16_384;

/// Most pixels an image may have (128 M: a 108-megapixel phone photo fits). A small file can claim
/// far more (a 32 KB PNG of 16384 x 16384 one-bit pixels decodes to 1.2 GB); PIL refuses at 179 M.
pub const MAX_PIXELS: u64 = 128 << 20;

/// The decoder's own allocation bound: `MAX_PIXELS` at 8 bytes a pixel (16-bit RGBA), the largest
/// layout a decoder produces before the conversion to RGB.
const MAX_DECODE_BYTES: u64 = 8 * MAX_PIXELS;

/// `[width, height]` from the file's header alone, checked against the limits above.
pub fn dimensions(bytes: &[u8]) -> Result<[u32; 2], ImageError> {
    let (width, height) = reader(bytes)?.into_dimensions().map_err(decode_error)?;
    check_size(width, height)?;
    Ok([width, height])
}

/// Decodes an image file's bytes (PNG, JPEG, WebP, GIF, BMP) to 8-bit RGB: its EXIF orientation
/// applied, alpha dropped, 16-bit and greyscale converted, as PIL's `exif_transpose` and
/// `convert("RGB")` do.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    // The sizes first (the decoder's own limits would refuse them as an unreadable file).
    dimensions(bytes)?;
    let mut reader = reader(bytes)?;
    let format = reader.format();
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    if format == Some(ImageFormat::Jpeg) && !jpeg_reaches_its_end(bytes) {
        return Err(ImageError::Truncated { format: "JPEG" });
    }
    // An unreadable EXIF block is not worth refusing the photo for: it shows as stored.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// An RGB image from the page's RGBA pixels (`ImageData.data`), alpha dropped.
pub fn rgb_from_rgba(rgba: &[u8], width: u32, height: u32) -> Result<RgbImage, ImageError> {
    let expected = 4 * width as usize * height as usize;
    if rgba.len() != expected || width == 0 || height == 0 {
        return Err(ImageError::PixelCount { len: rgba.len(), width, height });
    }
    let rgb = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Ok(RgbImage::from_raw(width, height, rgb).expect("length checked above"))
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
    ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| ImageError::Decode(e.to_string()))
}

fn decode_error(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(_) => ImageError::Decode(format!("{e} (vitrine decodes at most {MAX_PIXELS} pixels)")),
        e => ImageError::Decode(e.to_string()),
    }
}

fn check_size(width: u32, height: u32) -> Result<(), ImageError> {
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height, max_side: MAX_SIDE, max_pixels: MAX_PIXELS });
    }
    if width == 0 || height == 0 {
        return Err(ImageError::Empty { width, height });
    }
    Ok(())
}

/// Whether a JPEG's data run to its end-of-image marker. The decoder fills the rows of a file cut
/// short (a partial download or copy) with grey and reports nothing; the browser refuses it.
///
/// Walks the segments by their lengths (so an EXIF thumbnail's own end marker is skipped), and the
/// entropy-coded data of each scan to the marker that ends it: there `FF` is followed by `00` (a
/// stuffed byte) or a restart marker, anything else is a marker. Bytes that are not a marker
/// between segments are skipped, as lenient decoders do.
fn jpeg_reaches_its_end(bytes: &[u8]) -> bool {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    let mut i = 2; // after SOI
    let mut in_scan = false;
    while i + 1 < bytes.len() {
        let (byte, next) = (bytes[i], bytes[i + 1]);
        if byte != 0xFF || (in_scan && matches!(next, 0x00 | 0xD0..=0xD7)) {
            i += 1;
            continue;
        }
        in_scan = false;
        match next {
            EOI => return true,
            0xFF => i += 1,                          // fill byte
            0x01 | 0xD0..=0xD8 => i += 2,            // markers without a length
            marker => {
                let Some(length) = bytes.get(i + 2..i + 4) else { return false };
                i += 2 + usize::from(u16::from_be_bytes([length[0], length[1]]));
                in_scan = marker == SOS;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&image).unwrap();
        out
    }

    #[test]
    fn a_jpeg_cut_short_is_refused_and_a_whole_one_decodes() {
        let whole = jpeg(64, 48);
        assert_eq!(decode_image(&whole).unwrap().dimensions(), (64, 48));
        for keep in [whole.len() - 2, whole.len() / 2, 700] {
            let err = decode_image(&whole[..keep]).unwrap_err();
            assert!(matches!(err, ImageError::Truncated { .. } | ImageError::Decode(_)), "{keep} bytes: {err}");
        }
        let half = decode_image(&whole[..whole.len() / 2]).unwrap_err().to_string();
        assert!(half.contains("cut short"), "{half}");
        // Bytes after the end marker (a camera's trailer) are fine.
        let mut trailer = whole.clone();
        trailer.extend(b"\xFF\xD8 trailing data");
        assert!(decode_image(&trailer).is_ok());
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4 x 2 JPEG with an APP1 EXIF block saying "rotate 90 degrees clockwise" (orientation 6).
        let plain = jpeg(4, 2);
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        exif.extend([0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0, 6, 0, 0]); // tag 0x0112, SHORT, 1, value 6
        exif.extend([0, 0, 0, 0]); // no next IFD
        let mut rotated = plain[..2].to_vec();
        rotated.extend([0xFF, 0xE1]);
        rotated.extend(((exif.len() + 2) as u16).to_be_bytes());
        rotated.extend(&exif);
        rotated.extend(&plain[2..]);
        assert_eq!(decode_image(&plain).unwrap().dimensions(), (4, 2));
        let image = decode_image(&rotated).unwrap();
        assert_eq!(image.dimensions(), (2, 4), "stored 4 x 2, shown 2 x 4");
        let upright = decode_image(&plain).unwrap();
        // Rotated clockwise: the stored bottom-left pixel comes to the top-left.
        assert_eq!(image.get_pixel(0, 0), upright.get_pixel(0, 1));
    }

    #[test]
    fn more_pixels_than_the_limit_are_refused_before_decoding() {
        // A PNG header claiming 12000 x 12000 (144 M pixels, each side allowed), and no pixel data.
        let err = decode_image(&png_header(12_000, 12_000)).unwrap_err().to_string();
        assert!(err.contains("12000x12000") && err.contains("134217728 pixels"), "{err}");
        let err = dimensions(&png_header(100_000, 100_000)).unwrap_err().to_string();
        assert!(err.contains("100000x100000"), "{err}");
        // A side over the limit is the same error (not the decoder's own limit, which the page
        // would take for a format it cannot read).
        let err = decode_image(&png_header(20_000, 1)).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 20_000, height: 1, .. }), "{err}");
    }

    #[test]
    fn rgba_length_is_checked() {
        assert!(rgb_from_rgba(&[0; 15], 2, 2).is_err());
        assert_eq!(rgb_from_rgba(&[1, 2, 3, 4], 1, 1).unwrap().get_pixel(0, 0).0, [1, 2, 3]);
    }

    /// A PNG whose header (IHDR) claims `width` x `height` RGB pixels, followed by an empty IDAT.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(&mut png, b"IDAT", &[]);
        png
    }

    fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        png.extend((data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend(kind);
        png.extend(data);
        let crc = crc32(&png[start..]);
        png.extend(crc.to_be_bytes());
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
