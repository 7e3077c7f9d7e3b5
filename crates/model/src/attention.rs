//! Multi-head self-attention with HF's module tree (`ViTAttention` = `attention` + `output`).
//!
//! Not `burn::nn::attention::MultiHeadAttention`: that one has dropout 0.1 by default, other
//! tensor names, and ties the head size to `d_model / n_heads`. Here the head size is fixed by the
//! unpruned config, so a layer with heads removed keeps the width of each remaining head and its
//! `query/key/value` simply have fewer output rows.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use vitrine_kernels::linear;
use burn::tensor::Tensor;
use burn::tensor::Device;

/// `ViTSelfAttention`: projections to per-head queries, keys and values, and scaled dot-product attention.
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

/// `ViTSelfOutput`: the output projection. The residual connection lives in [`crate::layer::Layer`], as in HF.
#[derive(Module, Debug)]
pub struct SelfOutput {
    pub dense: Linear,
}

/// Which attention probabilities a forward pass gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probs {
    /// None: the fused attention kernel.
    Skip,
    /// The probabilities, computed explicitly.
    Keep,
    /// As `Keep`, and a zero tensor that requires gradients is added to them before they weigh the
    /// values: its gradient is the gradient with respect to the probabilities (autodiff devices;
    /// [`crate::explain`]). A leaf of its own, because burn keeps the gradients of leaves alone.
    Probe,
}

/// What [`Attention::forward`] returns.
pub struct Attended {
    /// `[batch, tokens, hidden]`, before the residual connection.
    pub output: Tensor<3>,
    /// `[batch, heads, tokens, tokens]`, when asked for.
    pub probs: Option<Tensor<4>>,
    /// The zero tensor of [`Probs::Probe`], shaped as `probs`.
    pub probe: Option<Tensor<4>>,
    /// `[batch, tokens, head_dim]`: the token-merging metric, when `size` was given.
    pub metric: Option<Tensor<3>>,
}

/// `ViTAttention`: exists to hold `attention` and `output`, hence HF's doubled `attention.attention` keys.
#[derive(Module, Debug)]
pub struct Attention {
    pub attention: SelfAttention,
    pub output: SelfOutput,
}

impl Attention {
    pub fn new(hidden: usize, num_heads: usize, head_dim: usize, qkv_bias: bool, device: &Device) -> Self {
        let inner = num_heads * head_dim;
        let projection = || LinearConfig::new(hidden, inner).with_bias(qkv_bias).init(device);
        Self {
            attention: SelfAttention {
                query: projection(),
                key: projection(),
                value: projection(),
                num_heads,
                head_dim,
            },
            output: SelfOutput { dense: LinearConfig::new(inner, hidden).init(device) },
        }
    }

    /// Heads in this layer (fewer than the config's after pruning).
    pub fn num_heads(&self) -> usize {
        self.attention.num_heads
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.attention.head_dim
    }

    /// Self-attention over `hidden_states`, with the attention probabilities that `probs` asks for.
    /// Over merged tokens ([`crate::tome`]), `size` (`[batch, tokens, 1]`, patches per token) adds
    /// `log(size)` to the scores (proportional attention), and the keys averaged over heads come
    /// back as the metric for the next merge.
    ///
    /// # Shapes
    /// - hidden_states: `[batch, tokens, hidden]`
    /// - output: see [`Attended`]
    pub fn forward(&self, hidden_states: Tensor<3>, probs: Probs, size: Option<&Tensor<3>>) -> Attended {
        let [batch, tokens, _] = hidden_states.dims();
        let (heads, head_dim) = (self.attention.num_heads, self.attention.head_dim);
        let split_heads = |x: Tensor<3>| x.reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2);
        let q = split_heads(linear(&self.attention.query, hidden_states.clone()));
        let k = split_heads(linear(&self.attention.key, hidden_states.clone()));
        let v = split_heads(linear(&self.attention.value, hidden_states));
        let metric = size.map(|_| k.clone().mean_dim(1).reshape([batch, tokens, head_dim]));
        let bias = size.map(|size| size.clone().log().swap_dims(1, 2).unsqueeze_dim::<4>(1).expand([batch, heads, tokens, tokens]));
        // Without token merging's bias, vitrine's fused kernels (on the CPU; burn's elsewhere).
        let explicit = match (probs, bias) {
            (Probs::Skip, None) => return self.attended(vitrine_kernels::attention(q, k, v), None, None, metric),
            (Probs::Skip, Some(bias)) => {
                let context = attention(q, k, v, None, Some(bias), AttentionModuleOptions::default());
                return self.attended(context, None, None, metric);
            }
            (_, None) => vitrine_kernels::attention_probs(q, k),
            (_, Some(bias)) => softmax(q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt() + bias, 3),
        };
        let probe = (probs == Probs::Probe).then(|| Tensor::zeros(explicit.shape(), &explicit.device()).require_grad());
        let weights = match &probe {
            Some(probe) => explicit.clone() + probe.clone(),
            None => explicit.clone(),
        };
        self.attended(weights.matmul(v), Some(explicit), probe, metric)
    }

    /// The output projection of `context` (`[batch, heads, tokens, head_dim]`), with what came with it.
    fn attended(&self, context: Tensor<4>, probs: Option<Tensor<4>>, probe: Option<Tensor<4>>, metric: Option<Tensor<3>>) -> Attended {
        let [batch, heads, tokens, head_dim] = context.dims();
        let context = context.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim]);
        Attended { output: linear(&self.output.dense, context), probs, probe, metric }
    }
}
