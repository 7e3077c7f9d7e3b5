//! The wasm-bindgen surface the page's Web Worker uses: a [`Backend`] (WebGPU or CPU), a
//! [`Classifier`] loaded onto it from a bundle's bytes, and a [`Prediction`] per image.
//!
//! Errors cross as `JsError` with a message for people; nothing here panics on user data.

#[cfg(not(target_feature = "atomics"))]
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

#[cfg(not(target_feature = "atomics"))]
use burn::tensor::wgpu::WgpuInitError;
use burn::tensor::{Device, Tensor};
use wasm_bindgen::prelude::*;

use vitrine_model::ImageError;
use vitrine_model::classes::{TopClass, softmax, top_k};

use crate::engine::Engine;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Why the WebGPU device was lost, once it has been.
type Lost = Arc<Mutex<Option<String>>>;

#[cfg(not(target_feature = "atomics"))]
thread_local! {
    /// burn registers one wgpu runtime per page (a second `init_async` is refused), so the device
    /// is acquired once and shared by every `Backend::webgpu` call.
    static WEBGPU: RefCell<Option<(Device, String, Lost)>> = const { RefCell::new(None) };
}

/// Where models run: WebGPU through burn-wgpu, or burn's flex CPU backend compiled to wasm (simd128).
#[wasm_bindgen]
pub struct Backend {
    device: Device,
    kind: &'static str,
    adapter: String,
    lost: Option<Lost>,
}

#[wasm_bindgen]
impl Backend {
    /// The WebGPU adapter and device, or an error saying which of `navigator.gpu`, the adapter or the
    /// device is missing.
    #[cfg(not(target_feature = "atomics"))]
    pub async fn webgpu() -> Result<Backend, JsError> {
        if let Some((device, adapter, lost)) = WEBGPU.with(|cell| cell.borrow().clone()) {
            return Ok(Backend { device, kind: "webgpu", adapter, lost: Some(lost) });
        }
        if !has_navigator_gpu() {
            return Err(JsError::new("this browser has no WebGPU (navigator.gpu is missing)"));
        }
        let (device, setup) = Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| JsError::new(&init_error(e)))?;
        let info = setup.adapter.get_info();
        // Browsers may leave the description empty (Chromium does): the page then describes it.
        let adapter = info.name;
        let lost: Lost = Arc::default();
        let flag = lost.clone();
        setup.device.set_device_lost_callback(move |reason, message| {
            *flag.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{reason:?}: {message}"));
        });
        WEBGPU.with(|cell| *cell.borrow_mut() = Some((device.clone(), adapter.clone(), lost.clone())));
        Ok(Backend { device, kind: "webgpu", adapter, lost: Some(lost) })
    }

    /// burn's flex backend on the CPU: on this thread, or on the thread pool of the threaded build.
    pub fn cpu() -> Backend {
        let threads = threads();
        let on = if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") };
        let simd = if cfg!(feature = "relaxed-simd") { "relaxed SIMD" } else { "simd128" };
        Backend { device: Device::flex(), kind: "cpu", adapter: format!("CPU (burn flex, wasm {simd}, {on})"), lost: None }
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.kind.to_string()
    }

    /// The adapter's description as the browser reports it (may be empty).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Why the WebGPU device was lost, if it was.
    #[wasm_bindgen(js_name = lostReason)]
    pub fn lost_reason(&self) -> Option<String> {
        lost_reason(&self.lost)
    }
}

impl Backend {
    /// The burn device models and inputs live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

fn lost_reason(lost: &Option<Lost>) -> Option<String> {
    lost.as_ref().and_then(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

#[cfg(not(target_feature = "atomics"))]
/// What went wrong with WebGPU, for people.
fn init_error(error: WgpuInitError) -> String {
    match error {
        WgpuInitError::AdapterUnavailable { .. } => "the browser offers no WebGPU adapter".to_string(),
        WgpuInitError::RequestDevice { message } => format!("the WebGPU adapter would not create a device: {message}"),
        other => format!("WebGPU could not start: {other}"),
    }
}

#[cfg(not(target_feature = "atomics"))]
/// `navigator.gpu` in a page or a worker.
fn has_navigator_gpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &JsValue::from_str("navigator"))
        .ok()
        .filter(|n| !n.is_undefined() && !n.is_null())
        .and_then(|navigator| js_sys::Reflect::get(&navigator, &JsValue::from_str("gpu")).ok())
        .is_some_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
}

/// Runs `work` on the CPU thread pool in the threaded build, so that the model's parallel parts split
/// among the pool's threads at once: called from this worker's own thread, each of them would be handed
/// over to the pool and waited for, and the pool's threads would spin against the serial parts. Elsewhere
/// it runs `work` here. (flex computes eagerly: a tensor returned from here is computed.)
fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    #[cfg(target_feature = "atomics")]
    return rayon::scope(|_| work());
    #[cfg(not(target_feature = "atomics"))]
    work()
}

/// Threads the CPU backend runs on: the thread pool's size in the threaded build (after
/// `initThreadPool`), otherwise 1.
#[wasm_bindgen]
pub fn threads() -> usize {
    #[cfg(target_feature = "atomics")]
    return rayon::current_num_threads();
    #[cfg(not(target_feature = "atomics"))]
    1
}

/// Which build this is (build.sh): `"relaxed"` for the threaded CPU build with relaxed SIMD,
/// `"threads"` for the one without, `"webgpu"` for the one with WebGPU and one CPU thread.
#[wasm_bindgen]
pub fn build() -> String {
    match (cfg!(target_feature = "atomics"), cfg!(feature = "relaxed-simd")) {
        (true, true) => "relaxed",
        (true, false) => "threads",
        _ => "webgpu",
    }
    .to_string()
}

/// A model bundle loaded onto a backend.
#[wasm_bindgen]
pub struct Classifier {
    engine: Engine,
    device: Device,
    lost: Option<Lost>,
}

#[wasm_bindgen]
impl Classifier {
    /// Builds the model of `config_json` (Hugging Face `config.json`) on `backend` from the bytes of
    /// `model.safetensors`; `preprocessor_json` is `preprocessor_config.json` when the bundle has one.
    pub fn load(
        backend: &Backend,
        weights: &[u8],
        config_json: &str,
        preprocessor_json: Option<String>,
    ) -> Result<Classifier, JsError> {
        let engine = Engine::load(config_json, weights, preprocessor_json.as_deref(), &backend.device)
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Classifier { engine, device: backend.device.clone(), lost: backend.lost.clone() })
    }

    /// The model as JSON ([`crate::ModelInfo`]).
    #[wasm_bindgen(getter)]
    pub fn info(&self) -> String {
        serde_json::to_string(&self.engine.info()).expect("plain data serialises")
    }

    /// Top-k and attention maps for RGBA pixels (`ImageData.data`).
    pub async fn classify(&self, rgba: Vec<u8>, width: u32, height: u32, top_k: usize) -> Result<Prediction, JsValue> {
        let pixels = on_pool(|| self.engine.pixels_from_rgba(&rgba, width, height, &self.device)).map_err(image_error)?;
        let mut prediction = self.predict(pixels, top_k).await.map_err(|e| JsError::new(&e))?;
        prediction.region = self.engine.visible_region([height, width]);
        prediction.width = width;
        prediction.height = height;
        Ok(prediction)
    }

    /// Top-k and attention maps for an image file's bytes, decoded as the `vitrine` CLI decodes them.
    #[wasm_bindgen(js_name = classifyFile)]
    pub async fn classify_file(&self, bytes: Vec<u8>, top_k: usize) -> Result<Prediction, JsValue> {
        let (pixels, size) = on_pool(|| self.engine.pixels_from_file(&bytes, &self.device)).map_err(image_error)?;
        let mut prediction = self.predict(pixels, top_k).await.map_err(|e| JsError::new(&e))?;
        prediction.region = self.engine.visible_region(size);
        prediction.width = size[1];
        prediction.height = size[0];
        Ok(prediction)
    }

    /// The bare forward pass on `[1, channels, height, width]` pixel values (already preprocessed):
    /// the logits, or a backbone's last hidden state, flattened. No decoding, preprocessing or
    /// attention maps: what the browser benchmark times against onnxruntime-web.
    pub async fn forward(&self, pixel_values: Vec<f32>, height: usize, width: usize) -> Result<Vec<f32>, JsError> {
        let [channels, patch] = self.engine.input_channels_and_patch();
        if pixel_values.len() != channels * height * width || height < patch || width < patch {
            let got = pixel_values.len();
            return Err(JsError::new(&format!("{got} pixel values for a {channels} x {height} x {width} input (patches of {patch} px)")));
        }
        let input = Tensor::<4>::from_data(burn::tensor::TensorData::new(pixel_values, [1, channels, height, width]), &self.device);
        let output = on_pool(|| self.engine.forward(input)).into_data_async().await.map_err(|e| JsError::new(&format!("reading results back failed: {e:?}")))?;
        output.try_into_vec::<f32>().map_err(|e| JsError::new(&format!("{e:?}")))
    }

    /// The relevance of each patch for class `class` (an index) in RGBA pixels, as [`Classifier::classify`]
    /// reads them: the prediction's `rows * cols` grid, peak 1 ([`Engine::relevance`]: gradients through
    /// burn's autodiff, on this backend, without token merging).
    pub async fn relevance(&self, rgba: Vec<u8>, width: u32, height: u32, class: usize) -> Result<Vec<f32>, JsValue> {
        let pixels = on_pool(|| self.engine.pixels_from_rgba(&rgba, width, height, &self.device)).map_err(image_error)?;
        self.relevance_of(pixels, class).await.map_err(|e| JsError::new(&e).into())
    }

    /// [`Classifier::relevance`] for an image file's bytes, as [`Classifier::classify_file`] reads them.
    #[wasm_bindgen(js_name = relevanceFile)]
    pub async fn relevance_file(&self, bytes: Vec<u8>, class: usize) -> Result<Vec<f32>, JsValue> {
        let (pixels, _) = on_pool(|| self.engine.pixels_from_file(&bytes, &self.device)).map_err(image_error)?;
        self.relevance_of(pixels, class).await.map_err(|e| JsError::new(&e).into())
    }

    /// Why the WebGPU device was lost, if it was (the page then moves to the CPU).
    #[wasm_bindgen(js_name = lostReason)]
    pub fn lost_reason(&self) -> Option<String> {
        lost_reason(&self.lost)
    }

    /// For each class name of a labelled folder, the index of the model's label with that name, as
    /// `vitrine eval` matches them; the error names a folder that matches no label, or several.
    #[wasm_bindgen(js_name = matchLabels)]
    pub fn match_labels(&self, classes: Vec<String>) -> Result<Vec<u32>, JsError> {
        let columns = vitrine_model::classes::match_labels("the model", self.engine.labels(), &classes)
            .map_err(|e| JsError::new(&e.to_string()))?;
        Ok(columns.into_iter().map(|c| c as u32).collect())
    }

    /// Token merging (ToMe): `r` token pairs merged in every block, a training-free speed-up; 0 turns it off.
    #[wasm_bindgen(js_name = setTokenMerging)]
    pub fn set_token_merging(&mut self, r: usize) -> Result<(), JsError> {
        self.engine.set_token_merging(r).map_err(|e| JsError::new(&e))
    }
}

impl Classifier {
    /// The loaded engine, for tests that feed exact pixel values.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// An error when the WebGPU device was lost: nothing more can run on it.
    fn device_alive(&self) -> Result<(), String> {
        match lost_reason(&self.lost) {
            Some(reason) => Err(format!("the WebGPU device was lost ({reason})")),
            None => Ok(()),
        }
    }

    /// The relevance map of `class` for one image's model input, read back.
    pub async fn relevance_of(&self, pixel_values: Tensor<4>, class: usize) -> Result<Vec<f32>, String> {
        self.device_alive()?;
        let map = on_pool(|| self.engine.relevance(pixel_values, class))?;
        let data = map.into_data_async().await.map_err(|e| format!("reading results back failed: {e:?}"))?;
        data.try_into_vec::<f32>().map_err(|e| format!("{e:?}"))
    }

    /// One image's `[1, channels, height, width]` model input to a [`Prediction`].
    pub async fn predict(&self, pixel_values: Tensor<4>, top_k_count: usize) -> Result<Prediction, String> {
        self.device_alive()?;
        let out = on_pool(|| self.engine.run(pixel_values));
        let read = |e| format!("reading results back failed: {e:?}");
        let maps = out.maps.into_data_async().await.map_err(read)?.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let logits = match out.logits {
            Some(logits) => logits.into_data_async().await.map_err(read)?.try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?,
            None => Vec::new(),
        };
        let top = top_k(&softmax(&logits), top_k_count, self.engine.labels());
        Ok(Prediction { top, logits, maps, rows: out.grid[0], cols: out.grid[1], region: [0.0, 0.0, 1.0, 1.0], width: 0, height: 0 })
    }
}

/// The answer for one image.
#[wasm_bindgen]
pub struct Prediction {
    top: Vec<TopClass>,
    logits: Vec<f32>,
    maps: Vec<f32>,
    rows: usize,
    cols: usize,
    region: [f32; 4],
    width: u32,
    height: u32,
}

#[wasm_bindgen]
impl Prediction {
    /// Labels of the top-k classes, most probable first (empty for a backbone).
    #[wasm_bindgen(getter)]
    pub fn labels(&self) -> Vec<String> {
        self.top.iter().map(|t| t.label.clone()).collect()
    }

    /// Class indices of the top-k.
    #[wasm_bindgen(getter)]
    pub fn indices(&self) -> Vec<u32> {
        self.top.iter().map(|t| t.index as u32).collect()
    }

    /// Softmax probabilities of the top-k.
    #[wasm_bindgen(getter)]
    pub fn probs(&self) -> Vec<f32> {
        self.top.iter().map(|t| t.prob).collect()
    }

    /// Every class's logit, in index order.
    #[wasm_bindgen(getter)]
    pub fn logits(&self) -> Vec<f32> {
        self.logits.clone()
    }

    /// Softmax over the logits of `columns` alone, in their order: a labelled folder's classes
    /// ([`Classifier::match_labels`]), read as `vitrine eval` reads a model whose labels are more.
    #[wasm_bindgen(js_name = probsOver)]
    pub fn probs_over(&self, columns: Vec<u32>) -> Vec<f32> {
        let picked: Vec<f32> = columns.iter().filter_map(|&c| self.logits.get(c as usize).copied()).collect();
        softmax(&picked)
    }

    /// `(2 + 2 * heads) * rows * cols` values in the order of `info.map_rows`: rollout, last-layer
    /// head mean, each head of each layer (each a row-major `rows x cols` grid scaled to a peak of
    /// 1), then each head's mask (0 or 1).
    #[wasm_bindgen(getter)]
    pub fn maps(&self) -> Vec<f32> {
        self.maps.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn rows(&self) -> usize {
        self.rows
    }

    #[wasm_bindgen(getter)]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Where the maps lie on the image: `[left, top, right, bottom]` as fractions of its sides.
    #[wasm_bindgen(getter)]
    pub fn region(&self) -> Vec<f32> {
        self.region.to_vec()
    }

    /// Width of the image in pixels (as decoded, for `classifyFile`).
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.width
    }

    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// An image that cannot become the model's input, as a JS `Error` named for what the page does
/// with it: `UnsupportedImage` (a format the decoder does not read: the page then gives the
/// browser's own pixels) or `ImageError` (cut short, too large, ...: refused, as natively).
fn image_error(error: ImageError) -> JsValue {
    let name = if matches!(error, ImageError::Decode(_)) { "UnsupportedImage" } else { "ImageError" };
    let value = JsValue::from(JsError::new(&error.to_string()));
    let _ = js_sys::Reflect::set(&value, &JsValue::from_str("name"), &JsValue::from_str(name));
    value
}
