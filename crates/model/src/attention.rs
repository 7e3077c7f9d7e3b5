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

/// What [`Attention::forward`] returns.
pub struct Attended {
    /// `[batch, tokens, hidden]`, before the residual connection.
    pub output: Tensor<3>,
    /// `[batch, heads, tokens, tokens]`, when asked for.
    pub probs: Option<Tensor<4>>,
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

    /// Self-attention over `hidden_states`. With `with_probs` it also returns the attention
    /// probabilities (computed explicitly); without, it uses the fused attention kernel.
    /// Over merged tokens ([`crate::tome`]), `size` (`[batch, tokens, 1]`, patches per token) adds
    /// `log(size)` to the scores (proportional attention), and the keys averaged over heads come
    /// back as the metric for the next merge.
    ///
    /// # Shapes
    /// - hidden_states: `[batch, tokens, hidden]`
    /// - output: see [`Attended`]
    pub fn forward(&self, hidden_states: Tensor<3>, with_probs: bool, size: Option<&Tensor<3>>) -> Attended {
        let [batch, tokens, _] = hidden_states.dims();
        let (heads, head_dim) = (self.attention.num_heads, self.attention.head_dim);
        let split_heads = |x: Tensor<3>| x.reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2);
        let q = split_heads(linear(&self.attention.query, hidden_states.clone()));
        let k = split_heads(linear(&self.attention.key, hidden_states.clone()));
        let v = split_heads(linear(&self.attention.value, hidden_states));
        let metric = size.map(|_| k.clone().mean_dim(1).reshape([batch, tokens, head_dim]));
        let bias = size.map(|size| size.clone().log().swap_dims(1, 2).unsqueeze_dim::<4>(1).expand([batch, heads, tokens, tokens]));
        // Without token merging's bias, vitrine's fused kernels (on the CPU; burn's elsewhere).
        let (context, probs) = match (with_probs, bias) {
            (true, None) => {
                let probs = vitrine_kernels::attention_probs(q, k);
                (probs.clone().matmul(v), Some(probs))
            }
            (true, Some(bias)) => {
                let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
                let probs = softmax(scores + bias, 3);
                (probs.clone().matmul(v), Some(probs))
            }
            (false, None) => (vitrine_kernels::attention(q, k, v), None),
            (false, Some(bias)) => (attention(q, k, v, None, Some(bias), AttentionModuleOptions::default()), None),
        };
        let context = context.swap_dims(1, 2).reshape([batch, tokens, heads * head_dim]);
        Attended { output: linear(&self.output.dense, context), probs, metric }
    }
}
