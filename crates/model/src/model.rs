//! The Vision Transformer: backbone (`ViTModel`) and classifier (`ViTForImageClassification`).
//!
//! Dosovitskiy et al. 2020, <https://arxiv.org/abs/2010.11929>; DeiT (Touvron et al. 2020,
//! <https://arxiv.org/abs/2012.12877>); DINOv2 (Oquab et al. 2023, <https://arxiv.org/abs/2304.07193>).
//! The module tree is transformers' `ViTForImageClassification`, so its tensor names are the
//! checkpoint's: `vit.embeddings.*`, `vit.encoder.layer.{i}.*`, `vit.layernorm.*`, `classifier.*`.
//! DeiT and DINOv2 differ only in configuration; [`crate::weights`] maps their names onto these.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{assert_shape, Tensor};
use burn::tensor::Device;

use crate::config::{Head, Pooling, VitConfig};
use crate::embeddings::Embeddings;
use crate::attention::Probs;
use crate::layer::{Layer, LayerOutput};
use crate::tome::Merging;

/// `ViTEncoder`: the stack of blocks.
#[derive(Module, Debug)]
pub struct Encoder {
    pub layer: Vec<Layer>,
}

/// `ViTModel` without its optional pooler: embeddings, blocks, final LayerNorm.
#[derive(Module, Debug)]
pub struct VitModel {
    pub embeddings: Embeddings,
    pub encoder: Encoder,
    pub layernorm: LayerNorm,
}

/// What a forward pass returns when attention maps are asked for.
#[derive(Debug, Clone)]
pub struct VitOutput {
    /// `[batch, tokens, hidden]` after the final LayerNorm (HF's `last_hidden_state`).
    pub last_hidden_state: Tensor<3>,
    /// `[batch, classes]`, when the model has a classifier.
    pub logits: Option<Tensor<2>>,
    /// One `[batch, heads, tokens, tokens]` tensor of attention probabilities per layer.
    pub attentions: Vec<Tensor<4>>,
    /// From [`Vit::forward_with_attention_probes`]: per layer, a zero tensor added to the attention
    /// probabilities, whose gradient is theirs. Empty otherwise.
    pub probes: Vec<Tensor<4>>,
}

/// A ViT with an optional classification head: ViT, DeiT (with or without its teacher head) or DINOv2.
#[derive(Module, Debug)]
pub struct Vit {
    pub vit: VitModel,
    pub classifier: Option<Linear>,
    /// DeiT's second head, on the distillation token (`DeiTForImageClassificationWithTeacher`).
    pub distillation_classifier: Option<Linear>,
    classifier_dropout: Dropout,
    #[module(skip)]
    pooling: Pooling,
    #[module(skip)]
    num_channels: usize,
    /// Token pairs merged per block at inference ([`crate::tome`]); 0 = off.
    #[module(skip)]
    token_merging: usize,
    /// The final LayerNorm's epsilon, for vitrine's kernel (burn keeps the norm's own private).
    #[module(skip)]
    layer_norm_eps: f64,
}

impl VitConfig {
    /// A model with this architecture; weights are initialised to placeholders, load real ones with
    /// [`crate::weights::load_safetensors`] or train them.
    ///
    /// # Panics
    /// If the config is invalid ([`VitConfig::validate`] says why).
    pub fn init(&self, device: &Device) -> Vit {
        if let Err(err) = self.validate() {
            panic!("{err}");
        }
        let hidden = self.hidden_size;
        let head_width = match self.pooling {
            Pooling::Cls => hidden,
            Pooling::ClsAndMeanPatch => 2 * hidden,
        };
        let linear_head = || LinearConfig::new(head_width, self.num_labels).init(device);
        Vit {
            vit: VitModel {
                embeddings: Embeddings::new(self, device),
                encoder: Encoder {
                    layer: (0..self.num_hidden_layers).map(|i| Layer::new(self, i, device)).collect(),
                },
                layernorm: LayerNormConfig::new(hidden).with_epsilon(self.layer_norm_eps).init(device),
            },
            classifier: (self.head != Head::None).then(linear_head),
            distillation_classifier: (self.head == Head::LinearWithDistillation)
                .then(|| LinearConfig::new(hidden, self.num_labels).init(device)),
            classifier_dropout: DropoutConfig::new(self.classifier_dropout).init(),
            pooling: self.pooling,
            num_channels: self.num_channels,
            token_merging: 0,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl Vit {
    /// Whether the model has a classification head (a backbone has none).
    pub fn has_head(&self) -> bool {
        self.classifier.is_some()
    }

    /// Number of classes (0 for a backbone).
    pub fn num_labels(&self) -> usize {
        self.classifier.as_ref().map_or(0, |c| c.weight.dims()[1])
    }

    /// The same model with token merging (ToMe, [`crate::tome`]): `r` token pairs merged in every
    /// block of [`Vit::forward`], [`Vit::forward_features`] and [`Vit::forward_with_attentions`]
    /// (0 turns it off). Training from cached blocks ([`Vit::forward_blocks`]) never merges.
    pub fn with_token_merging(mut self, r: usize) -> Self {
        self.token_merging = r;
        self
    }

    /// The same model computing its blocks' Linear layers in int8 (weights per output channel,
    /// activations per token, i32 sums: [`vitrine_kernels::int8`]) where the device and CPU have
    /// the integer kernels (flex, no autodiff, AVX2 or AVX-512 VNNI); unchanged elsewhere. For
    /// inference: an int8 bundle's weights give back its own integers.
    pub fn with_int8_products(mut self) -> Self {
        for (_, linear) in self.block_linears_mut() {
            *linear = vitrine_kernels::quantize_linear(linear.clone());
        }
        self
    }

    /// The blocks' Linear layers, the ones int8 applies to, each with its parameter path
    /// (`vit.encoder.layer.<i>.attention.attention.query`, ...).
    pub fn block_linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut linears = Vec::new();
        for (i, layer) in self.vit.encoder.layer.iter_mut().enumerate() {
            let path = |part: &str| format!("vit.encoder.layer.{i}.{part}");
            let attention = &mut layer.attention.attention;
            linears.push((path("attention.attention.query"), &mut attention.query));
            linears.push((path("attention.attention.key"), &mut attention.key));
            linears.push((path("attention.attention.value"), &mut attention.value));
            linears.push((path("attention.output.dense"), &mut layer.attention.output.dense));
            linears.push((path("intermediate.dense"), &mut layer.intermediate.dense));
            linears.push((path("output.dense"), &mut layer.output.dense));
        }
        linears
    }

    /// Token pairs merged per block (0: off).
    pub fn token_merging(&self) -> usize {
        self.token_merging
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, channels, height, width]`
    /// - output: `[batch, classes]`
    ///
    /// # Panics
    /// If the model has no classifier ([`Vit::has_head`]) or the channel count is wrong.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let run = self.run(pixel_values, Probs::Skip);
        self.heads(run.last_hidden_state, run.size).combined()
    }

    /// The backbone: `last_hidden_state`, after the final LayerNorm (with token merging, the merged tokens).
    ///
    /// # Shapes
    /// - pixel_values: `[batch, channels, height, width]`, sides at least one patch
    /// - output: `[batch, tokens, hidden]`
    pub fn forward_features(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        self.run(pixel_values, Probs::Skip).last_hidden_state
    }

    /// Everything at once: hidden states, logits (when there is a head) and every layer's attention.
    /// With token merging, the attention maps are spread back over the original tokens.
    pub fn forward_with_attentions(&self, pixel_values: Tensor<4>) -> VitOutput {
        self.output(self.run(pixel_values, Probs::Keep))
    }

    /// [`Vit::forward_with_attentions`] with [`VitOutput::probes`], for gradients with respect to
    /// the attention probabilities (on an autodiff device). Without token merging: a gradient per
    /// attention entry needs the same tokens in every layer.
    pub fn forward_with_attention_probes(&self, pixel_values: Tensor<4>) -> VitOutput {
        self.output(self.clone().with_token_merging(0).run(pixel_values, Probs::Probe))
    }

    fn output(&self, run: Run) -> VitOutput {
        let logits = self.has_head().then(|| self.heads(run.last_hidden_state.clone(), run.size).combined());
        VitOutput { last_hidden_state: run.last_hidden_state, logits, attentions: run.attentions, probes: run.probes }
    }

    /// Patch, class (and distillation) token and position embeddings: the first block's input.
    ///
    /// # Shapes
    /// - pixel_values: `[batch, channels, height, width]`
    /// - output: `[batch, tokens, hidden]`
    pub fn embed(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        assert_shape!(pixel_values, [_, self.num_channels, _, _]);
        self.vit.embeddings.forward(pixel_values)
    }

    /// Runs blocks `blocks` (a range of block indices) on hidden states, without merging tokens.
    /// Training caches the output of frozen blocks with this.
    pub fn forward_blocks(&self, mut hidden_states: Tensor<3>, blocks: std::ops::Range<usize>) -> Tensor<3> {
        vitrine_kernels::on_pool(&hidden_states.device(), || {
            for layer in &self.vit.encoder.layer[blocks] {
                hidden_states = layer.forward(hidden_states, Probs::Skip, None).hidden_states;
            }
            hidden_states
        })
    }

    /// `last_hidden_state` from the input of block `start`: the remaining blocks and the final
    /// LayerNorm (training from cached blocks; `start` 0 takes [`Vit::embed`]'s output).
    pub fn forward_features_from(&self, hidden_states: Tensor<3>, start: usize) -> Tensor<3> {
        let end = self.vit.encoder.layer.len();
        vitrine_kernels::layer_norm(&self.vit.layernorm, self.layer_norm_eps, self.forward_blocks(hidden_states, start..end))
    }

    /// The embeddings and blocks, keeping the attention probabilities that `probs` asks for; on
    /// the CPU's thread pool ([`vitrine_kernels::on_pool`]).
    fn run(&self, pixel_values: Tensor<4>, probs: Probs) -> Run {
        vitrine_kernels::on_pool(&pixel_values.device(), || self.run_here(pixel_values, probs))
    }

    /// [`Vit::run`]'s body, on the calling thread.
    fn run_here(&self, pixel_values: Tensor<4>, probs: Probs) -> Run {
        assert_shape!(pixel_values, [_, self.num_channels, _, _]);
        let mut x = self.vit.embeddings.forward(pixel_values);
        let mut merging = (self.token_merging > 0)
            .then(|| Merging::new(&x, self.vit.embeddings.num_prefix_tokens(), probs != Probs::Skip));
        let (mut attentions, mut probes) = (Vec::new(), Vec::new());
        for layer in &self.vit.encoder.layer {
            let out: LayerOutput = layer.forward(x, probs, merging.as_mut().map(|m| (m, self.token_merging)));
            x = out.hidden_states;
            attentions.extend(out.probs);
            probes.extend(out.probe);
        }
        Run { last_hidden_state: vitrine_kernels::layer_norm(&self.vit.layernorm, self.layer_norm_eps, x), attentions, probes, size: merging.map(|m| m.size) }
    }

    /// The classifier's input: CLS, or CLS concatenated with the mean patch token (DINOv2).
    ///
    /// # Shapes
    /// - last_hidden_state: `[batch, tokens, hidden]`
    /// - output: `[batch, hidden]` or `[batch, 2 * hidden]`
    pub fn pre_logits(&self, last_hidden_state: Tensor<3>) -> Tensor<2> {
        self.pool(last_hidden_state, None)
    }

    /// Width of [`Vit::pre_logits`]: the hidden size, twice it with DINOv2's mean patch token.
    pub fn pre_logits_width(&self) -> usize {
        let hidden = self.vit.layernorm.gamma.dims()[0];
        match self.pooling {
            Pooling::Cls => hidden,
            Pooling::ClsAndMeanPatch => 2 * hidden,
        }
    }

    /// [`Vit::pre_logits`]; after token merging the patch mean weighs each token by its `size`.
    fn pool(&self, last_hidden_state: Tensor<3>, size: Option<Tensor<3>>) -> Tensor<2> {
        let [batch, tokens, hidden] = last_hidden_state.dims();
        let cls = last_hidden_state.clone().narrow(1, 0, 1).reshape([batch, hidden]);
        match self.pooling {
            Pooling::Cls => cls,
            Pooling::ClsAndMeanPatch => {
                let prefix = self.vit.embeddings.num_prefix_tokens();
                let patches = last_hidden_state.narrow(1, prefix, tokens - prefix);
                let mean = match size {
                    None => patches.mean_dim(1),
                    Some(size) => {
                        let size = size.narrow(1, prefix, tokens - prefix);
                        (patches * size.clone()).sum_dim(1) / size.sum_dim(1)
                    }
                };
                Tensor::cat(vec![cls, mean.reshape([batch, hidden])], 1)
            }
        }
    }

    /// The class head's logits and, for DeiT with a distillation token, the distillation head's
    /// (training needs them apart: DeiT trains the second on the teacher's labels).
    pub fn forward_heads(&self, last_hidden_state: Tensor<3>) -> Heads {
        self.heads(last_hidden_state, None)
    }

    fn heads(&self, last_hidden_state: Tensor<3>, size: Option<Tensor<3>>) -> Heads {
        let classifier = self.classifier.as_ref().expect("this model has no classifier (a backbone)");
        let logits = classifier.forward(self.classifier_dropout.forward(self.pool(last_hidden_state.clone(), size)));
        let distilled = self.distillation_classifier.as_ref().map(|distillation| {
            let [batch, _, hidden] = last_hidden_state.dims();
            let token = last_hidden_state.narrow(1, 1, 1).reshape([batch, hidden]);
            distillation.forward(self.classifier_dropout.forward(token))
        });
        Heads { class: logits, distilled }
    }

    /// Logits from `last_hidden_state`; DeiT with its teacher head averages both heads, as HF does.
    ///
    /// # Panics
    /// If the model has no classifier.
    pub fn forward_head(&self, last_hidden_state: Tensor<3>) -> Tensor<2> {
        self.forward_heads(last_hidden_state).combined()
    }
}

/// What [`Vit::run`] gives: the final hidden states, the attentions and probes asked for, and with
/// token merging the number of patches behind each final token (`[batch, tokens, 1]`).
struct Run {
    last_hidden_state: Tensor<3>,
    attentions: Vec<Tensor<4>>,
    probes: Vec<Tensor<4>>,
    size: Option<Tensor<3>>,
}

/// What the classification heads give: `[batch, classes]` each.
#[derive(Debug, Clone)]
pub struct Heads {
    pub class: Tensor<2>,
    /// DeiT's distillation head, on the distillation token.
    pub distilled: Option<Tensor<2>>,
}

impl Heads {
    /// The model's logits: the class head's, or with a distillation head the mean of both, as HF's
    /// `DeiTForImageClassificationWithTeacher` gives at inference.
    pub fn combined(self) -> Tensor<2> {
        match self.distilled {
            None => self.class,
            Some(distilled) => (self.class + distilled) / 2.0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Activation, ModelType};

    pub(crate) fn tiny(model_type: ModelType, head: Head) -> VitConfig {
        VitConfig::new(
            model_type,
            32,
            2,
            4,
            vec![4, 3],
            vec![48, 40],
            Activation::Gelu,
            1e-6,
            32,
            8,
            3,
            true,
            model_type == ModelType::Deit,
            if model_type == ModelType::Dinov2 { Pooling::ClsAndMeanPatch } else { Pooling::Cls },
            head,
            5,
        )
        .with_layerscale_value((model_type == ModelType::Dinov2).then_some(1.0))
    }

    #[test]
    fn shapes_on_non_square_batches() {
        let device = Device::flex();
        device.seed(0);
        for (model_type, head, tokens) in [
            (ModelType::Vit, Head::Linear, 1 + 4 * 6),
            (ModelType::Deit, Head::LinearWithDistillation, 2 + 4 * 6),
            (ModelType::Dinov2, Head::Linear, 1 + 4 * 6),
        ] {
            let model = tiny(model_type, head).init(&device);
            let out = model.forward_with_attentions(Tensor::random([2, 3, 32, 48], burn::tensor::Distribution::Default, &device));
            assert_eq!(out.last_hidden_state.dims(), [2, tokens, 32]);
            assert_eq!(out.logits.unwrap().dims(), [2, 5]);
            assert_eq!(out.attentions[0].dims(), [2, 4, tokens, tokens]);
            assert_eq!(out.attentions[1].dims(), [2, 3, tokens, tokens], "layer 1 has 3 heads left");
        }
    }

    #[test]
    fn fused_and_explicit_attention_agree() {
        let device = Device::flex();
        device.seed(1);
        let model = tiny(ModelType::Vit, Head::Linear).init(&device);
        let x = Tensor::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
        let fused = model.forward(x.clone());
        let explicit = model.forward_with_attentions(x).logits.unwrap();
        fused.into_data().assert_approx_eq::<f32>(&explicit.into_data(), burn::tensor::Tolerance::absolute(1e-5));
    }

    #[test]
    #[should_panic(expected = "assert_shape!(pixel_values, [_, self.num_channels, _, _])")]
    fn wrong_channel_count_panics() {
        let device = Device::flex();
        let model = tiny(ModelType::Vit, Head::Linear).init(&device);
        model.forward(Tensor::zeros([1, 4, 32, 32], &device));
    }
}
