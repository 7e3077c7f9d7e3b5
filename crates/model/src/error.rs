//! Errors at the model crate's boundaries: configuration, weights, images.

use thiserror::Error;

/// A `config.json` or `preprocessor_config.json` that vitrine cannot use.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unknown model_type {0:?} (vitrine reads vit, deit and dinov2)")]
    UnknownModelType(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl From<serde_json::Error> for ConfigError {
    fn from(e: serde_json::Error) -> Self {
        ConfigError::Json(e.to_string())
    }
}

/// Weights that do not fit the model they are loaded into.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),
    #[error("tensor {name:?} has dtype {dtype}, which vitrine cannot read")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("{} tensor(s) missing from the weights: {}", .0.len(), preview(.0))]
    MissingKeys(Vec<String>),
    #[error("{} unexpected tensor(s) in the weights: {}", .0.len(), preview(.0))]
    UnexpectedKeys(Vec<String>),
    #[error("tensor {name:?} has shape {found:?}, the model expects {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name:?}: {message}")]
    Tensor { name: String, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bundle's `preprocessor_config.json` (the other files are fine).
    #[error("preprocessor_config.json: {0}")]
    Preprocessor(ConfigError),
}

/// A few names are enough to act on; hundreds bury the message.
pub fn preview(names: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", names.len() - SHOWN));
    }
    text
}

/// An image that cannot be turned into pixels.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("image is {width}x{height} pixels, more than vitrine accepts ({max_side} pixels a side, {max_pixels} pixels in all)")]
    TooLarge { width: u32, height: u32, max_side: u32, max_pixels: u64 },
    #[error("the {format} file is cut short (its data end before the image does): a partial download or copy?")]
    Truncated { format: &'static str },
    #[error("image is empty ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("{len} bytes of RGBA pixels do not make a {width}x{height} image")]
    PixelCount { len: usize, width: u32, height: u32 },
    #[error("a {width}x{height} image would resize to {}x{}: the aspect ratio is too extreme", .resized[1], .resized[0])]
    ExtremeAspect { width: u32, height: u32, resized: [u32; 2] },
    #[error("images of a batch must preprocess to one size, got {first:?} and {other:?}")]
    MixedSizes { first: [u32; 2], other: [u32; 2] },
}
