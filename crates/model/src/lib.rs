//! vitrine-model: one Vision Transformer (ViT, DeiT, DINOv2 in Hugging Face layout) for every target.
//!
//! Backend-generic through burn's run-time `Device`, with no file system, threads or network, so the
//! same code runs natively and in the browser (wasm32). Other crates depend on this one, never the reverse.

// The model's parts, reached through `Vit`'s fields (module tree = checkpoint names).
mod attention;
mod embeddings;
mod interpolate;
mod layer;
mod model;

// What the other crates use.
pub mod attention_map;
pub mod classes;
pub mod config;
pub mod decode;
mod error;
pub mod explain;
mod preprocess;
pub mod prune;
pub mod tome;
pub mod weights;

pub use config::{HfVitConfig, ModelType, VitConfig};
pub use error::{ConfigError, ImageError, LoadError};
pub use model::{Heads, Vit, VitOutput};
pub use preprocess::PreprocessConfig;
pub use weights::{Loaded, Storage, load_bundle, load_bundle_for_inference, load_safetensors, save_safetensors, save_safetensors_as};
