//! One pre-norm encoder block: `ViTLayer` in transformers, with DINOv2's LayerScale as an option.
//!
//! ```text
//! x = x + drop_path(layer_scale1(attention(layernorm_before(x))))
//! x = x + drop_path(layer_scale2(output(intermediate(layernorm_after(x)))))
//! ```

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig, Relu};
use burn::tensor::Tensor;
use burn::tensor::Device;

use vitrine_kernels::{layer_norm, linear};

use crate::attention::{Attended, Attention, Probs};
use crate::config::{Activation, VitConfig};
use crate::tome::Merging;

/// The MLP activation; a module so that it lives in the layer like HF's `intermediate_act_fn`.
#[derive(Module, Debug)]
pub enum Act {
    Gelu(Gelu),
    Relu(Relu),
}

impl Act {
    fn new(activation: Activation) -> Self {
        match activation {
            Activation::Gelu => Self::Gelu(Gelu::new()),
            Activation::GeluTanh => Self::Gelu(Gelu::new_approximate()),
            Activation::Relu => Self::Relu(Relu::new()),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Gelu(gelu) => gelu.forward(x),
            Self::Relu(relu) => relu.forward(x),
        }
    }
}

/// `ViTIntermediate`: the MLP's widening projection and activation (DINOv2's `mlp.fc1`).
#[derive(Module, Debug)]
pub struct Intermediate {
    pub dense: Linear,
    act: Act,
}

impl Intermediate {
    /// The widening projection and the activation; the exact GELU runs in the projection's last pass.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.act {
            Act::Gelu(gelu) if !gelu.approximate => vitrine_kernels::linear_gelu(&self.dense, x),
            act => act.forward(linear(&self.dense, x)),
        }
    }
}

/// `ViTOutput`: the MLP's narrowing projection (DINOv2's `mlp.fc2`). The residual is added in [`Layer`].
#[derive(Module, Debug)]
pub struct Output {
    pub dense: Linear,
}

/// `Dinov2LayerScale`: a learnt per-channel gain on each residual branch.
#[derive(Module, Debug)]
pub struct LayerScale {
    pub lambda1: Param<Tensor<1>>,
}

impl LayerScale {
    fn new(hidden: usize, value: f64, device: &Device) -> Self {
        Self { lambda1: Param::from_tensor(Tensor::full([hidden], value, device)) }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x * self.lambda1.val().unsqueeze::<3>()
    }
}

/// Stochastic depth: drops a whole residual branch per sample while training.
///
/// It is burn's `Dropout` applied to a `[batch, 1, 1]` mask of ones, so it is active exactly when
/// `Dropout` is (an autodiff device, training, rate above 0) and the identity otherwise.
#[derive(Module, Debug)]
pub struct DropPath {
    dropout: Dropout,
}

impl DropPath {
    fn new(rate: f64) -> Self {
        Self { dropout: DropoutConfig::new(rate).init() }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if self.dropout.prob == 0.0 || !x.device().is_autodiff() {
            return x;
        }
        let [batch, _, _] = x.dims();
        let keep = self.dropout.forward(Tensor::ones([batch, 1, 1], &x.device()));
        x * keep
    }
}

/// `ViTLayer` (DINOv2: `Dinov2Layer`, whose `norm1`/`norm2`/`mlp.fc1`/`mlp.fc2` map onto these names).
#[derive(Module, Debug)]
pub struct Layer {
    pub attention: Attention,
    pub intermediate: Intermediate,
    pub output: Output,
    pub layernorm_before: LayerNorm,
    pub layernorm_after: LayerNorm,
    pub layer_scale1: Option<LayerScale>,
    pub layer_scale2: Option<LayerScale>,
    drop_path: DropPath,
    /// The norms' epsilon, for vitrine's kernel (burn keeps each norm's own private).
    #[module(skip)]
    layer_norm_eps: f64,
}

impl Layer {
    /// Block `index` of the model described by `config` (its own head count and MLP width).
    pub fn new(config: &VitConfig, index: usize, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let width = config.layer_intermediate_size[index];
        let norm = || LayerNormConfig::new(hidden).with_epsilon(config.layer_norm_eps).init(device);
        let scale = || config.layerscale_value.map(|v| LayerScale::new(hidden, v, device));
        // Linear ramp of stochastic depth over the blocks, as in timm and HF.
        let rate = if config.num_hidden_layers > 1 {
            config.drop_path_rate * index as f64 / (config.num_hidden_layers - 1) as f64
        } else {
            0.0
        };
        Self {
            attention: Attention::new(
                hidden,
                config.layer_num_attention_heads[index],
                config.head_dim(),
                config.qkv_bias,
                device,
            ),
            intermediate: Intermediate {
                dense: LinearConfig::new(hidden, width).init(device),
                act: Act::new(config.hidden_act),
            },
            output: Output { dense: LinearConfig::new(width, hidden).init(device) },
            layernorm_before: norm(),
            layernorm_after: norm(),
            layer_scale1: scale(),
            layer_scale2: scale(),
            drop_path: DropPath::new(rate),
            layer_norm_eps: config.layer_norm_eps,
        }
    }

    /// The block, with the attention probabilities that `probs` asks for. With token merging
    /// ([`crate::tome`]), `r` pairs merge between attention and MLP, and the probabilities come
    /// back spread over the original tokens.
    ///
    /// # Shapes
    /// - hidden_states: `[batch, tokens, hidden]`
    /// - output: `[batch, tokens - r, hidden]`, and `[batch, heads, original tokens, original tokens]` when asked
    ///
    /// # Panics
    /// With both token merging and [`Probs::Probe`]: a probe's gradient needs the same tokens throughout.
    pub fn forward(&self, hidden_states: Tensor<3>, probs: Probs, merging: Option<(&mut Merging, usize)>) -> LayerOutput {
        assert!(merging.is_none() || probs != Probs::Probe, "attention probes need every token: no token merging");
        let size = merging.as_ref().map(|(state, _)| &state.size);
        let Attended { output, mut probs, probe, metric } =
            self.attention.forward(layer_norm(&self.layernorm_before, self.layer_norm_eps, hidden_states.clone()), probs, size);
        let mut x = hidden_states + self.drop_path.forward(scaled(&self.layer_scale1, output));
        if let (Some((state, r)), Some(metric)) = (merging, metric) {
            probs = probs.map(|p| state.unmerge_attention(p));
            x = state.merge(x, metric, r);
        }
        let hidden = self.intermediate.forward(layer_norm(&self.layernorm_after, self.layer_norm_eps, x.clone()));
        let mlp = linear(&self.output.dense, hidden);
        LayerOutput { hidden_states: x + self.drop_path.forward(scaled(&self.layer_scale2, mlp)), probs, probe }
    }
}

/// What [`Layer::forward`] returns.
pub struct LayerOutput {
    /// `[batch, tokens, hidden]`: the next block's input.
    pub hidden_states: Tensor<3>,
    /// The attention probabilities, when asked for.
    pub probs: Option<Tensor<4>>,
    /// With [`Probs::Probe`], the zero tensor whose gradient is that of `probs`.
    pub probe: Option<Tensor<4>>,
}

fn scaled(scale: &Option<LayerScale>, x: Tensor<3>) -> Tensor<3> {
    match scale {
        Some(scale) => scale.forward(x),
        None => x,
    }
}
