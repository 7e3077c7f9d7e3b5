//! vitrine-web: the vitrine ViT for the browser page, on WebGPU or on the CPU.
//!
//! The page's Web Worker does all I/O (fetch, Cache API, messages); this crate only turns a model
//! bundle's bytes into a [`vitrine_model::Vit`] and pixels into top-k classes and attention maps.
//! [`engine`] is that work for any burn [`Device`](burn::tensor::Device), built and unit-tested
//! natively on burn's flex CPU backend; `bindings` (wasm32 only) is the wasm-bindgen surface:
//! `Backend` (WebGPU through burn-wgpu, or flex compiled to wasm with simd128) and `Classifier`.
//! One model type serves both backends; results are read back with `into_data_async` only, since
//! a browser cannot block on the GPU.

pub mod engine;

#[cfg(target_arch = "wasm32")]
mod bindings;

#[cfg(target_arch = "wasm32")]
pub use bindings::{Backend, Classifier, Prediction, build, threads};
/// `initThreadPool(n)` for the page's worker: rayon's pool of `n` Web Workers (threaded build only).
#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
pub use wasm_bindgen_rayon::init_thread_pool;
pub use engine::{Engine, ModelInfo, Outputs};
pub use vitrine_model::classes::{TopClass, softmax, top_k};
