//! Image preprocessing from `preprocessor_config.json`: decode, resize, centre crop, rescale, normalise.
//!
//! Ports transformers' slow (PIL) `ViTImageProcessor`, `DeiTImageProcessor` and `BitImageProcessor`
//! (used by DINOv2). One code path serves the CLI, evaluation and the browser. Resampling uses
//! `fast_image_resize`, whose 8-bit convolution follows Pillow's (fixed-point weights, support
//! stretched when shrinking, rounding after each pass), with SIMD natively and in wasm; the parity
//! tests measure how far its pixels and the resulting probabilities are from PIL's.

use burn::tensor::{Tensor, TensorData};
use burn::tensor::Device;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::Deserialize;

use crate::config::{ModelType, VitConfig};
use crate::decode::MAX_SIDE;
use crate::error::{ConfigError, ImageError};

/// Most patches (tokens) a model input may have: a 1,400 px square at DINOv2's 14 px patches, a
/// 1,600 px one at 16. Attention's time and memory grow with the square of this.
pub const MAX_TOKENS: usize = 10_000;

/// Most pixels a resize may produce before cropping (an image 1 pixel tall would otherwise ask
/// for a 256 x 4 M intermediate).
const MAX_RESIZED_PIXELS: u64 = 64 << 20;

/// How the image is first resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// To exactly `[height, width]`, ignoring the aspect ratio (`size: {height, width}`).
    Exact { height: u32, width: u32 },
    /// Shorter side to this length, aspect kept (`size: {shortest_edge}`).
    ShortestEdge(u32),
}

/// PIL's resampling filters by their number in `resample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Resample {
    fn from_pil(code: u32) -> Result<Self, ConfigError> {
        match code {
            0 => Ok(Self::Nearest),
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            other => Err(ConfigError::Unsupported(format!("resample filter {other} (box or hamming)"))),
        }
    }

    fn algorithm(self) -> ResizeAlg {
        match self {
            Self::Nearest => ResizeAlg::Nearest,
            Self::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            // PIL's bicubic is Keys' cubic with a = -0.5, which is Catmull-Rom.
            Self::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
            Self::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
        }
    }

    /// `image` resized to `width` x `height` with this filter.
    fn resize(self, image: &RgbImage, width: u32, height: u32) -> RgbImage {
        let mut resized = RgbImage::new(width, height);
        Resizer::new()
            .resize(image, &mut resized, &ResizeOptions::new().resize_alg(self.algorithm()))
            .expect("RGB8 in, RGB8 out, both non-empty");
        resized
    }
}

/// The image-to-tensor recipe of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub resize: Option<Resize>,
    pub resample: Resample,
    /// `[height, width]` of the centre crop, if any.
    pub crop: Option<[u32; 2]>,
    /// Multiplier from 0..255 values (`rescale_factor`, 1/255), if rescaling. f64 as in transformers,
    /// so that `u8 * factor` rounds to the same f32 as its `u8 / 255`.
    pub rescale: Option<f64>,
    /// Per-channel `(mean, std)`, if normalising.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// `preprocessor_config.json` as written by transformers (keys vitrine reads).
#[derive(Debug, Default, Deserialize)]
struct HfPreprocessor {
    image_processor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<serde_json::Value>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<serde_json::Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `IMAGENET_STANDARD_MEAN/STD` in transformers: what `google/vit-*` uses.
const HALF: [f32; 3] = [0.5, 0.5, 0.5];
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl PreprocessConfig {
    /// Parses `preprocessor_config.json`; absent keys take the processor class's defaults.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let hf: HfPreprocessor = serde_json::from_str(json)?;
        let kind = hf.image_processor_type.as_deref().unwrap_or("ViTImageProcessor");
        // Class defaults: (size, resample, crop, mean, std).
        let (size, resample, crop, mean, std) = match kind {
            "ViTImageProcessor" | "ViTImageProcessorFast" => {
                (Resize::Exact { height: 224, width: 224 }, 2, None, HALF, HALF)
            }
            "DeiTImageProcessor" | "DeiTImageProcessorFast" => {
                (Resize::Exact { height: 256, width: 256 }, 3, Some([224, 224]), IMAGENET_MEAN, IMAGENET_STD)
            }
            "BitImageProcessor" | "BitImageProcessorFast" => {
                (Resize::ShortestEdge(224), 3, Some([224, 224]), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
            }
            other => return Err(ConfigError::Unsupported(format!("image_processor_type {other:?}"))),
        };
        let size = match &hf.size {
            Some(value) => parse_resize(value)?,
            None => size,
        };
        let crop = match (&hf.crop_size, hf.do_center_crop) {
            (_, Some(false)) => None,
            (Some(value), _) => match parse_resize(value)? {
                Resize::Exact { height, width } => Some([height, width]),
                Resize::ShortestEdge(side) => Some([side, side]),
            },
            (None, Some(true)) => crop.or(Some([224, 224])),
            (None, None) => crop,
        };
        let channels = |name: &str, v: Option<Vec<f32>>, default: [f32; 3]| -> Result<[f32; 3], ConfigError> {
            match v {
                None => Ok(default),
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                Some(v) if v.len() == 1 => Ok([v[0]; 3]),
                Some(v) => Err(ConfigError::Invalid(format!("{name} has {} values, expected 3", v.len()))),
            }
        };
        let mean = channels("image_mean", hf.image_mean, mean)?;
        let std = channels("image_std", hf.image_std, std)?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(ConfigError::Invalid(format!("image_std {std:?} must be positive")));
        }
        Ok(Self {
            resize: hf.do_resize.unwrap_or(true).then_some(size),
            resample: Resample::from_pil(hf.resample.unwrap_or(resample))?,
            crop,
            rescale: hf.do_rescale.unwrap_or(true).then_some(hf.rescale_factor.unwrap_or(1.0 / 255.0)),
            normalize: hf.do_normalize.unwrap_or(true).then_some((mean, std)),
        })
    }

    /// Refuses a preprocessing whose images would be smaller than one of the model's patches (the
    /// patch embedding would have nothing to read), or give more than [`MAX_TOKENS`] patches.
    pub fn check_fits(&self, config: &VitConfig) -> Result<(), ConfigError> {
        let Some([height, width]) = self.smallest_output() else { return Ok(()) };
        let patch = config.patch_size;
        if (height.min(width) as usize) < patch {
            return Err(ConfigError::Invalid(format!(
                "the preprocessing makes images {} px on a side, smaller than the model's {patch} px patches",
                height.min(width)
            )));
        }
        let tokens = (height as usize / patch) * (width as usize / patch);
        if tokens > MAX_TOKENS {
            return Err(ConfigError::Invalid(format!(
                "the preprocessing makes {height}x{width} px inputs, {tokens} patches of {patch} px: more than the {MAX_TOKENS} vitrine runs"
            )));
        }
        Ok(())
    }

    /// `[height, width]` of the smallest input this recipe makes, if it is known before an image is
    /// read: the crop, an exact resize, or the square of a shortest edge kept without a crop.
    pub fn smallest_output(&self) -> Option<[u32; 2]> {
        match (self.crop, self.resize) {
            (Some(size), _) => Some(size),
            (None, Some(Resize::Exact { height, width })) => Some([height, width]),
            (None, Some(Resize::ShortestEdge(edge))) => Some([edge, edge]),
            (None, None) => None, // the image's own size
        }
    }

    /// What the Hugging Face checkpoints of each family ship, for checkpoints without a preprocessor
    /// config: `google/vit-*` (exact resize to `image_size`, mean = std = 0.5) and `facebook/dinov2-*`
    /// (shortest edge 256, crop 224, ImageNet statistics, whatever `image_size` says).
    pub fn default_for(config: &VitConfig) -> Self {
        let side = config.image_size as u32;
        match config.model_type {
            ModelType::Dinov2 => Self {
                resize: Some(Resize::ShortestEdge(256)),
                resample: Resample::Bicubic,
                crop: Some([224, 224]),
                rescale: Some(1.0 / 255.0),
                normalize: Some((IMAGENET_MEAN, IMAGENET_STD)),
            },
            ModelType::Vit | ModelType::Deit => Self {
                resize: Some(Resize::Exact { height: side, width: side }),
                resample: Resample::Bilinear,
                crop: None,
                rescale: Some(1.0 / 255.0),
                normalize: Some((HALF, HALF)),
            },
        }
    }

    /// The same recipe for `side` x `side` model inputs: the crop becomes `side` and the resize keeps
    /// its ratio to the crop (256/224 stays 256/224); without a crop the resize becomes `side`.
    pub fn at_size(&self, side: u32) -> Self {
        let mut out = self.clone();
        match (self.resize, self.crop) {
            (Some(Resize::ShortestEdge(edge)), Some([crop, _])) => {
                out.resize = Some(Resize::ShortestEdge((f64::from(edge) * f64::from(side) / f64::from(crop)).round() as u32));
                out.crop = Some([side, side]);
            }
            (_, Some(_)) => {
                out.resize = self.resize.map(|_| Resize::Exact { height: side, width: side });
                out.crop = Some([side, side]);
            }
            (_, None) => out.resize = Some(Resize::Exact { height: side, width: side }),
        }
        out
    }

    /// `preprocessor_config.json` for this recipe, as transformers reads it (`image_processor_type`
    /// names the processor class: `BitImageProcessor` for DINOv2, `ViTImageProcessor` otherwise).
    pub fn to_json(&self, model_type: ModelType) -> serde_json::Value {
        let size = |resize: Resize| match resize {
            Resize::Exact { height, width } => serde_json::json!({ "height": height, "width": width }),
            Resize::ShortestEdge(edge) => serde_json::json!({ "shortest_edge": edge }),
        };
        let (mean, std) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let resample = match self.resample {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
        };
        let processor = if model_type == ModelType::Dinov2 { "BitImageProcessor" } else { "ViTImageProcessor" };
        let mut json = serde_json::json!({
            "image_processor_type": processor,
            "do_resize": self.resize.is_some(),
            "resample": resample,
            "do_center_crop": self.crop.is_some(),
            "do_rescale": self.rescale.is_some(),
            "rescale_factor": self.rescale.unwrap_or(1.0 / 255.0),
            "do_normalize": self.normalize.is_some(),
            "image_mean": mean,
            "image_std": std,
            "do_convert_rgb": true,
        });
        if let Some(resize) = self.resize {
            json["size"] = size(resize);
        }
        if let Some([height, width]) = self.crop {
            json["crop_size"] = serde_json::json!({ "height": height, "width": width });
        }
        json
    }

    /// `[height, width]` of the tensor this recipe makes from an image of `[height, width]`.
    pub fn output_size(&self, [height, width]: [u32; 2]) -> [u32; 2] {
        self.crop.unwrap_or_else(|| self.resized([height, width]))
    }

    /// The size an image of `[height, width]` has after the resize, before the crop.
    fn resized(&self, size: [u32; 2]) -> [u32; 2] {
        self.resize.map_or(size, |resize| resized_size(resize, size))
    }

    /// The part of an image of `[height, width]` that the model input shows (after resize and centre
    /// crop), as fractions `[left, top, right, bottom]` of the image: where attention maps go. A
    /// crop larger than the resized image reaches outside `0..1`.
    pub fn visible_region(&self, [height, width]: [u32; 2]) -> [f32; 4] {
        let [resized_h, resized_w] = self.resized([height, width]);
        let Some([crop_h, crop_w]) = self.crop else { return [0.0, 0.0, 1.0, 1.0] };
        let [top, left] = crop_origin([resized_h, resized_w], [crop_h, crop_w]).map(|v| v as f32);
        let (rh, rw) = (resized_h.max(1) as f32, resized_w.max(1) as f32);
        [left / rw, top / rh, (left + crop_w as f32) / rw, (top + crop_h as f32) / rh]
    }

    /// The normalised `[3, height, width]` values (channel-major) for one image.
    pub fn pixels(&self, image: &RgbImage) -> Result<Vec<f32>, ImageError> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(ImageError::Empty { width, height });
        }
        let resized;
        let mut image = image;
        if let Some(resize) = self.resize {
            let [h, w] = resized_size(resize, [height, width]);
            if u64::from(h) * u64::from(w) > MAX_RESIZED_PIXELS {
                return Err(ImageError::ExtremeAspect { width, height, resized: [h, w] });
            }
            if [h, w] != [height, width] {
                resized = self.resample.resize(image, w, h);
                image = &resized;
            }
        }
        let (width, height) = image.dimensions();
        let [out_h, out_w] = self.crop.unwrap_or([height, width]);
        let [top, left] = crop_origin([height, width], [out_h, out_w]);
        let plane = (out_h * out_w) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        let (scale, (mean, std)) = (self.rescale.unwrap_or(1.0), self.normalize.unwrap_or(([0.0; 3], [1.0; 3])));
        for y in 0..out_h as i64 {
            for x in 0..out_w as i64 {
                let (sy, sx) = (y + top, x + left);
                let inside = (0..i64::from(height)).contains(&sy) && (0..i64::from(width)).contains(&sx);
                let i = (y * i64::from(out_w) + x) as usize;
                for c in 0..3 {
                    let value = if inside { f64::from(image.get_pixel(sx as u32, sy as u32)[c]) } else { 0.0 };
                    out[c * plane + i] = ((value * scale) as f32 - mean[c]) / std[c];
                }
            }
        }
        Ok(out)
    }

    /// A `[batch, 3, height, width]` tensor from images that all give the same output size.
    pub fn batch<I: std::borrow::Borrow<RgbImage>>(&self, images: &[I], device: &Device) -> Result<Tensor<4>, ImageError> {
        let mut values = Vec::new();
        let mut size = None;
        for image in images {
            let image = image.borrow();
            let (w, h) = image.dimensions();
            let out = self.output_size([h, w]);
            let first = *size.get_or_insert(out);
            if first != out {
                return Err(ImageError::MixedSizes { first, other: out });
            }
            values.extend(self.pixels(image)?);
        }
        let [h, w] = size.unwrap_or([0, 0]);
        let data = TensorData::new(values, [images.len(), 3, h as usize, w as usize]);
        Ok(Tensor::from_data(data, device))
    }
}

fn parse_resize(value: &serde_json::Value) -> Result<Resize, ConfigError> {
    // 1 to MAX_SIDE pixels: 0 would make an empty image, and a larger integer must not wrap to a
    // small one (4294967297 is 1 as a u32).
    let checked = |n: u64| match u32::try_from(n) {
        Ok(side) if (1..=MAX_SIDE).contains(&side) => Ok(side),
        _ => Err(ConfigError::Invalid(format!("size {value}: each side must be 1 to {MAX_SIDE} pixels"))),
    };
    let side = |key: &str| value.get(key).and_then(|v| v.as_u64());
    if let Some(n) = value.as_u64() {
        let side = checked(n)?;
        return Ok(Resize::Exact { height: side, width: side });
    }
    match (side("height"), side("width"), side("shortest_edge")) {
        (Some(height), Some(width), _) => Ok(Resize::Exact { height: checked(height)?, width: checked(width)? }),
        (_, _, Some(edge)) => Ok(Resize::ShortestEdge(checked(edge)?)),
        _ => Err(ConfigError::Invalid(format!("unsupported size {value}"))),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the long side is truncated.
/// Where transformers' `center_crop` starts, `[top, left]`: `(size - crop) // 2`, negative (zero
/// padding) where the crop is larger than the image.
fn crop_origin([height, width]: [u32; 2], [crop_h, crop_w]: [u32; 2]) -> [i64; 2] {
    [(i64::from(height) - i64::from(crop_h)).div_euclid(2), (i64::from(width) - i64::from(crop_w)).div_euclid(2)]
}

fn resized_size(resize: Resize, [height, width]: [u32; 2]) -> [u32; 2] {
    match resize {
        Resize::Exact { height, width } => [height, width],
        Resize::ShortestEdge(edge) => {
            let long = |l: u32, s: u32| ((u64::from(edge) * u64::from(l)) / u64::from(s)).min(u64::from(u32::MAX)) as u32;
            if width <= height { [long(height, width), edge] } else { [edge, long(width, height)] }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_out_of_range_are_refused_not_wrapped() {
        for json in [r#"{"size": 0}"#, r#"{"size": 4294967297}"#, r#"{"size": {"height": 0, "width": 224}}"#, r#"{"crop_size": 0}"#, r#"{"size": {"shortest_edge": 99999}}"#] {
            let err = PreprocessConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains("each side must be 1 to 16384 pixels"), "{json}: {err}");
        }
    }

    #[test]
    fn images_smaller_than_a_patch_are_refused() {
        let hf = crate::config::HfVitConfig::from_json(r#"{"model_type": "vit", "image_size": 32, "patch_size": 8}"#).unwrap();
        let config = hf.to_vit_config(crate::config::Head::None).unwrap();
        let tiny = PreprocessConfig::from_json(r#"{"size": 4}"#).unwrap();
        let err = tiny.check_fits(&config).unwrap_err().to_string();
        assert!(err.contains("4 px on a side, smaller than the model's 8 px patches"), "{err}");
        let cropped = PreprocessConfig::from_json(r#"{"size": 64, "do_center_crop": true, "crop_size": 7}"#).unwrap();
        assert!(cropped.check_fits(&config).is_err(), "the crop decides");
        assert!(PreprocessConfig::from_json(r#"{"size": 8}"#).unwrap().check_fits(&config).is_ok(), "one patch is enough");
        let huge = PreprocessConfig::from_json(r#"{"size": 4000, "do_center_crop": true, "crop_size": 4000}"#).unwrap();
        let err = huge.check_fits(&config).unwrap_err().to_string();
        assert!(err.contains("4000x4000 px inputs, 250000 patches of 8 px: more than the 10000"), "{err}");
        assert!(PreprocessConfig::from_json(r#"{"size": 800}"#).unwrap().check_fits(&config).is_ok(), "100 x 100 patches");
    }

    #[test]
    fn json_round_trips_and_resizes_in_proportion() {
        let config = crate::model::tests::tiny(ModelType::Dinov2, crate::config::Head::Linear);
        let dinov2 = PreprocessConfig::default_for(&config);
        let back = PreprocessConfig::from_json(&dinov2.to_json(ModelType::Dinov2).to_string()).unwrap();
        assert_eq!(back, dinov2);
        let small = dinov2.at_size(112);
        assert_eq!((small.resize, small.crop), (Some(Resize::ShortestEdge(128)), Some([112, 112])));
        let vit = PreprocessConfig::default_for(&VitConfig { model_type: ModelType::Vit, ..config });
        assert_eq!(PreprocessConfig::from_json(&vit.to_json(ModelType::Vit).to_string()).unwrap(), vit);
    }

    #[test]
    fn dinov2_processor_resizes_the_short_side_and_crops() {
        let config = PreprocessConfig::from_json(
            r#"{"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256},
                "crop_size": {"height": 224, "width": 224}, "resample": 3,
                "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#,
        )
        .unwrap();
        assert_eq!(config.resize, Some(Resize::ShortestEdge(256)));
        assert_eq!(resized_size(Resize::ShortestEdge(256), [224, 300]), [256, 342]);
        assert_eq!(config.output_size([224, 300]), [224, 224]);
        let pixels = config.pixels(&RgbImage::from_pixel(300, 224, image::Rgb([255, 0, 128]))).unwrap();
        assert_eq!(pixels.len(), 3 * 224 * 224);
        assert!((pixels[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
    }

    #[test]
    fn a_one_pixel_image_is_fine_and_a_sliver_is_refused() {
        let config = PreprocessConfig::from_json(r#"{"image_processor_type": "BitImageProcessor"}"#).unwrap();
        assert_eq!(config.pixels(&RgbImage::new(1, 1)).unwrap().len(), 3 * 224 * 224);
        let err = config.pixels(&RgbImage::new(1, 16_000)).unwrap_err().to_string();
        assert!(err.contains("aspect ratio is too extreme"), "{err}");
    }

    #[test]
    fn crop_larger_than_image_pads_with_zeros() {
        let config = PreprocessConfig {
            resize: None,
            resample: Resample::Bilinear,
            crop: Some([4, 4]),
            rescale: None,
            normalize: None,
        };
        let pixels = config.pixels(&RgbImage::from_pixel(2, 2, image::Rgb([9, 9, 9]))).unwrap();
        assert_eq!(&pixels[..4], &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&pixels[4..8], &[0.0, 9.0, 9.0, 0.0]);
    }
}
