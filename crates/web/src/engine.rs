//! What the page asks of a model, for any burn device: load a bundle, turn pixels into logits and
//! every attention map the page can draw, rank classes.
//!
//! Nothing here blocks on a device: [`Engine::run`] returns tensors, and the caller reads them back
//! (`into_data_async` in the browser, where WebGPU cannot be waited on synchronously).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::Serialize;
use vitrine_model::attention_map::{AttentionMap, attention_map, head_mask, peak_normalised};
use vitrine_model::decode::{decode_image, rgb_from_rgba};
use vitrine_model::explain::{for_gradients, relevance};
use vitrine_model::weights::Family;
use vitrine_model::{ImageError, LoadError, PreprocessConfig, Vit, VitConfig, load_bundle_for_inference};

/// A loaded model bundle and the recipe that turns images into its input.
#[derive(Debug)]
pub struct Engine {
    model: Vit,
    /// The model for relevance ([`vitrine_model::explain::for_gradients`]), made when first asked.
    gradients: std::sync::OnceLock<Vit>,
    config: VitConfig,
    preprocess: PreprocessConfig,
    labels: Vec<String>,
    family: Family,
}

/// What the page shows about a model, and what it needs to lay out the attention maps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// `vit`, `deit` or `dinov2`.
    pub model_type: String,
    /// The tensor naming of the weights: `hf` or `timm`.
    pub naming: String,
    pub hidden_size: usize,
    pub patch_size: usize,
    /// Heads of each layer, in order (pruned models have fewer in some layers).
    pub heads: Vec<usize>,
    /// Classes of the classifier (0 for a backbone).
    pub num_labels: usize,
    pub parameters: usize,
    /// `[height, width]` of the model input for a square image.
    pub input_size: [u32; 2],
    /// Which row of [`Outputs::maps`] holds which map.
    pub map_rows: MapRows,
}

/// Where each attention map lies among the rows of [`Outputs::maps`]: rollout, then the mean of
/// the last layer's heads, then every head of every layer, layer-major, then every head's mask in
/// the same order. [`all_maps`] writes this order and the page reads it from here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapRows {
    pub rollout: usize,
    pub last_layer_mean: usize,
    /// The row of head 0 of each layer: head `h` of layer `l` is row `first_head[l] + h`.
    pub first_head: Vec<usize>,
    /// The same for the heads' masks ([`AttentionMap::HeadMask`]).
    pub first_mask: Vec<usize>,
}

impl MapRows {
    /// The rows for layers of `heads` heads each.
    pub fn new(heads: &[usize]) -> Self {
        let starts = |first: usize| heads.iter().scan(first, |next, &h| Some(std::mem::replace(next, *next + h))).collect();
        let total: usize = heads.iter().sum();
        Self { rollout: 0, last_layer_mean: 1, first_head: starts(2), first_mask: starts(2 + total) }
    }

    pub fn row(&self, map: AttentionMap) -> usize {
        match map {
            AttentionMap::Rollout => self.rollout,
            AttentionMap::LastLayerMean => self.last_layer_mean,
            AttentionMap::Head { layer, head } => self.first_head[layer] + head,
            AttentionMap::HeadMask { layer, head } => self.first_mask[layer] + head,
        }
    }
}

/// One forward pass.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `[batch, classes]`, when the model has a classifier.
    pub logits: Option<Tensor<2>>,
    /// `[batch, 2 + 2 * heads in all layers, rows * cols]`: peak-normalised CLS attention over the
    /// patch grid and the heads' masks, in the order of [`MapRows`].
    pub maps: Tensor<3>,
    /// `[rows, cols]` of the patch grid.
    pub grid: [usize; 2],
}

impl Engine {
    /// Builds the model of `config_json` on `device` and loads `weights` (safetensors) strictly.
    /// Without `preprocessor_json`, the family's Hugging Face defaults apply. An int8 bundle
    /// computes with integer products on the CPU ([`vitrine_model::load_bundle_for_inference`]).
    pub fn load(
        config_json: &str,
        weights: &[u8],
        preprocessor_json: Option<&str>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let (loaded, preprocess) = load_bundle_for_inference(config_json, weights, preprocessor_json, device)?;
        Ok(Self {
            model: loaded.model,
            gradients: std::sync::OnceLock::new(),
            config: loaded.config,
            preprocess,
            labels: loaded.labels,
            family: loaded.family,
        })
    }

    pub fn info(&self) -> ModelInfo {
        let side = self.config.image_size as u32;
        ModelInfo {
            model_type: self.config.model_type.as_str().to_string(),
            naming: match self.family {
                Family::Hf(_) => "hf",
                Family::Timm => "timm",
            }
            .to_string(),
            hidden_size: self.config.hidden_size,
            patch_size: self.config.patch_size,
            heads: self.config.layer_num_attention_heads.clone(),
            map_rows: MapRows::new(&self.config.layer_num_attention_heads),
            num_labels: self.model.num_labels(),
            parameters: self.model.num_params(),
            input_size: self.preprocess.output_size([side, side]),
        }
    }

    /// Token merging (ToMe): `r` token pairs merged in every block, 0 to turn it off.
    pub fn set_token_merging(&mut self, r: usize) -> Result<(), String> {
        vitrine_model::tome::check_pairs(r, &self.config, &self.preprocess)?;
        self.model = self.model.clone().with_token_merging(r);
        Ok(())
    }

    /// The model input's channels and the patch size (the smallest side it takes).
    pub fn input_channels_and_patch(&self) -> [usize; 2] {
        [self.config.num_channels, self.config.patch_size]
    }

    /// Class names in index order (empty for a backbone).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model input for the page's RGBA pixels (`ImageData.data`, alpha ignored).
    pub fn pixels_from_rgba(&self, rgba: &[u8], width: u32, height: u32, device: &Device) -> Result<Tensor<4>, ImageError> {
        let image = rgb_from_rgba(rgba, width, height)?;
        self.preprocess.batch(&[image], device)
    }

    /// The model input for an image file's bytes, decoded by the same code as the `vitrine` CLI,
    /// and the image's `[height, width]`.
    pub fn pixels_from_file(&self, bytes: &[u8], device: &Device) -> Result<(Tensor<4>, [u32; 2]), ImageError> {
        let image = decode_image(bytes)?;
        let size = [image.height(), image.width()];
        Ok((self.preprocess.batch(&[image], device)?, size))
    }

    /// The part of an image of `[height, width]` that the model input shows, as fractions
    /// `[left, top, right, bottom]`: where the attention maps go ([`PreprocessConfig::visible_region`]).
    pub fn visible_region(&self, size: [u32; 2]) -> [f32; 4] {
        self.preprocess.visible_region(size)
    }

    /// The bare forward pass: logits `[batch, classes]`, or a backbone's last hidden state
    /// `[batch, tokens, hidden]` flattened to `[batch, tokens * hidden]`. No attention maps.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        if self.model.has_head() {
            return self.model.forward(pixel_values);
        }
        let features = self.model.forward_features(pixel_values);
        let [batch, tokens, hidden] = features.dims();
        features.reshape([batch, tokens * hidden])
    }

    /// Logits and attention maps for `[batch, channels, height, width]` model input.
    pub fn run(&self, pixel_values: Tensor<4>) -> Outputs {
        let [_, _, height, width] = pixel_values.dims();
        let patch = self.config.patch_size;
        let grid = [height / patch, width / patch];
        let out = self.model.forward_with_attentions(pixel_values);
        let maps = all_maps(&out.attentions, self.config.num_prefix_tokens(), grid);
        Outputs { logits: out.logits, maps, grid }
    }

    /// The relevance of each patch for `class` ([`vitrine_model::explain`]), `[1, rows * cols]`,
    /// peak-normalised, for a `[1, channels, height, width]` model input: one forward and one
    /// backward pass on the autodiff flavour of the device, without token merging.
    pub fn relevance(&self, pixel_values: Tensor<4>, class: usize) -> Result<Tensor<2>, String> {
        let labels = self.model.num_labels();
        if class >= labels {
            return Err(format!("class {class} of a model with {labels} classes"));
        }
        let model = self.gradients.get_or_init(|| for_gradients(&self.model));
        let map = relevance(model, pixel_values.autodiff(), &[class]);
        let [batch, rows, cols] = map.dims();
        Ok(map.reshape([batch, rows * cols]))
    }
}

/// The rows of [`Outputs::maps`] from per-layer attention probabilities, in [`MapRows`]' order.
///
/// # Shapes
/// - attentions: one `[batch, heads, tokens, tokens]` per layer, `tokens = prefix + rows * cols`
/// - output: `[batch, 2 + 2 * total heads, rows * cols]`
///
/// # Panics
/// If `attentions` is empty or the grid does not match the tokens.
pub fn all_maps(attentions: &[Tensor<4>], prefix: usize, [rows, cols]: [usize; 2]) -> Tensor<3> {
    let patches = rows * cols;
    let whole = |map| {
        let out = attention_map(attentions, map, prefix, [rows, cols]);
        let batch = out.dims()[0];
        out.reshape([batch, 1, patches])
    };
    let mut parts = vec![whole(AttentionMap::Rollout), whole(AttentionMap::LastLayerMean)];
    let mut masks = Vec::new();
    // Every head at once per layer: the same values as `AttentionMap::Head` and `HeadMask`, without
    // one small graph per head (a ViT-B has 144 heads, and each graph is a round of GPU dispatches).
    for probs in attentions {
        let [batch, heads, _, _] = probs.dims();
        let cls = probs.clone().narrow(2, 0, 1).narrow(3, prefix, patches).reshape([batch * heads, patches]);
        parts.push(peak_normalised(cls.clone()).reshape([batch, heads, patches]));
        masks.push(head_mask(cls).reshape([batch, heads, patches]));
    }
    parts.extend(masks);
    Tensor::cat(parts, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    use burn::tensor::{TensorData, Tolerance};
    use safetensors::SafeTensors;
    use vitrine_model::classes::softmax;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn load(name: &str, device: &Device) -> Engine {
        let dir = fixtures().join(name);
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let preprocessor = std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap();
        let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
        Engine::load(&config, &weights, Some(&preprocessor), device).unwrap()
    }

    fn tensor<const D: usize>(file: &SafeTensors, name: &str, device: &Device) -> Tensor<D> {
        let view = file.tensor(name).unwrap();
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_data(TensorData::new(values, view.shape().to_vec()), device)
    }

    #[test]
    fn per_head_rows_equal_the_model_crates_head_maps() {
        let device = Device::flex();
        let bytes = std::fs::read(fixtures().join("deit/expected.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let attentions: Vec<Tensor<4>> = (0..2).map(|i| tensor(&file, &format!("attentions.{i}"), &device)).collect();
        let all = all_maps(&attentions, 2, [4, 4]);
        assert_eq!(all.dims(), [2, 2 + 2 * (4 + 4), 16]);
        let rows = MapRows::new(&[4, 4]);
        assert_eq!((rows.first_head.as_slice(), rows.first_mask.as_slice()), ([2, 6].as_slice(), [10, 14].as_slice()));
        let maps = [AttentionMap::Rollout, AttentionMap::LastLayerMean, AttentionMap::Head { layer: 0, head: 0 }]
            .into_iter()
            .chain([(0, 3), (1, 0), (1, 3)].map(|(layer, head)| AttentionMap::Head { layer, head }))
            .chain([(0, 0), (1, 2), (1, 3)].map(|(layer, head)| AttentionMap::HeadMask { layer, head }));
        for map in maps {
            let row = all.clone().narrow(1, rows.row(map), 1).reshape([2, 4, 4]).into_data();
            row.assert_approx_eq::<f32>(&attention_map(&attentions, map, 2, [4, 4]).into_data(), Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn logits_and_shapes_on_a_non_square_input() {
        let device = Device::flex();
        let engine = load("dinov2", &device);
        let bytes = std::fs::read(fixtures().join("dinov2/expected.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let out = engine.run(tensor(&file, "ns.pixel_values", &device));
        assert_eq!(out.grid, [4, 6]);
        assert_eq!(out.maps.dims(), [2, 2 + 2 * (4 + 4), 24]);
        out.logits.unwrap().into_data().assert_approx_eq::<f32>(&tensor::<2>(&file, "ns.logits", &device).into_data(), Tolerance::absolute(1e-4));
    }

    /// The page's relevance is the model crate's, against the PyTorch reference of
    /// `tests/fixtures/make_relevance_fixtures.py` (1e-4), with token merging on.
    #[test]
    fn relevance_matches_the_reference() {
        let device = Device::flex();
        let mut engine = load("deit", &device);
        engine.set_token_merging(2).unwrap();
        let inputs = std::fs::read(fixtures().join("deit/expected.safetensors")).unwrap();
        let pixels: Tensor<4> = tensor(&SafeTensors::deserialize(&inputs).unwrap(), "ns.pixel_values", &device);
        let reference = std::fs::read(fixtures().join("relevance.safetensors")).unwrap();
        let want: Tensor<4> = tensor(&SafeTensors::deserialize(&reference).unwrap(), "deit.ns.relevance", &device);
        for class in [0, 3] {
            let got = engine.relevance(pixels.clone().narrow(0, 1, 1), class).unwrap();
            let want = want.clone().narrow(0, 1, 1).narrow(1, class, 1).reshape([1, 24]);
            got.into_data().assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
        assert!(engine.relevance(pixels.narrow(0, 0, 1), 5).unwrap_err().contains("class 5 of a model with 5 classes"));
    }

    #[test]
    fn info_describes_the_bundle() {
        let device = Device::flex();
        let info = load("deit", &device).info();
        assert_eq!(info.model_type, "deit");
        assert_eq!(info.heads, vec![4, 4]);
        assert_eq!(info.num_labels, 5);
        assert_eq!(info.input_size, [32, 32]);
        assert_eq!(load("vit_timm", &device).info().naming, "timm");
    }

    /// The photo path against transformers' pipeline (PIL decode and resize): 2e-3, for the decoder and
    /// resampler differences that `crates/model/tests/parity.rs` measures.
    #[test]
    fn photos_classify_like_the_transformers_pipeline() {
        let device = Device::flex();
        for name in ["vit", "deit", "dinov2"] {
            let engine = load(name, &device);
            let pipeline: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(fixtures().join(name).join("pipeline.json")).unwrap()).unwrap();
            for case in pipeline.as_array().unwrap() {
                let image = case["image"].as_str().unwrap();
                let bytes = std::fs::read(fixtures().join(image)).unwrap();
                let out = engine.run(engine.pixels_from_file(&bytes, &device).unwrap().0);
                let logits = out.logits.unwrap().into_data().try_to_vec::<f32>().unwrap();
                let probs = softmax(&logits);
                for (ours, theirs) in probs.iter().zip(case["probs"].as_array().unwrap()) {
                    let diff = (ours - theirs.as_f64().unwrap() as f32).abs();
                    assert!(diff <= 2e-3, "{name}/{image}: probabilities differ by {diff}");
                }
            }
        }
    }

    #[test]
    fn rgba_and_file_bytes_agree() {
        let device = Device::flex();
        let engine = load("vit", &device);
        let png = std::fs::read(fixtures().join("images/wide.png")).unwrap();
        let rgb = decode_image(&png).unwrap();
        let rgba: Vec<u8> = rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        let a = engine.pixels_from_file(&png, &device).unwrap().0.into_data();
        let b = engine.pixels_from_rgba(&rgba, rgb.width(), rgb.height(), &device).unwrap().into_data();
        assert_eq!(a, b);
        let err = engine.pixels_from_file(b"not an image", &device).unwrap_err().to_string();
        assert!(err.contains("cannot decode image"), "{err}");
    }

    #[test]
    fn visible_region_follows_resize_and_crop() {
        let device = Device::flex();
        // vit: exact resize, no crop: the whole image.
        assert_eq!(load("vit", &device).visible_region([40, 96]), [0.0, 0.0, 1.0, 1.0]);
        // dinov2: shortest edge 36 then crop 32: a 40x96 image resizes to 36x86, the crop is 2..34 x 27..59.
        let [l, t, r, b] = load("dinov2", &device).visible_region([40, 96]);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(l, 27.0 / 86.0) && close(t, 2.0 / 36.0) && close(r, 59.0 / 86.0) && close(b, 34.0 / 36.0), "{l} {t} {r} {b}");
    }
}
