//! The kernels as burn backend extensions: [`InferenceOps`] (attention maps) on flex, and
//! [`LinearOps`], [`AttentionOps`] and [`GeluOps`] on flex and under autodiff, each with a backward
//! node of its own. Other backends never reach these traits (see `lib.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::{FloatTensor, QuantizedTensor};
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{DType, Shape};
use burn_flex::{FlexTensor, Layout};

use crate::attention::{self, Dims, Operand};
use crate::optim::{self, AdamWBuffers, AdamWStep};
use crate::norm;
use crate::{elementwise, int8};
use crate::linear::{self, Matrix};

/// Operations used without gradients: the attention maps.
#[backend_extension(Flex)]
pub trait InferenceOps: Backend {
    /// `softmax(q k^T / sqrt(dim))`, `[batch, heads, q, kv]`.
    fn attention_probs(q: FloatTensor<Self>, k: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Linear layers with int8 weights ([`crate::int8`]), for inference.
#[backend_extension(Flex)]
pub trait Int8Ops: Backend {
    /// `x [rows, in] @ weight [in, out] + bias [out]`, then the exact GELU when `gelu`; the weight
    /// quantized per output column as [`crate::quantize_linear`] makes it.
    fn linear_int8(x: FloatTensor<Self>, weight: QuantizedTensor<Self>, bias: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self>;
}

/// LayerNorm over the last axis of `[rows, width]`, also under autodiff: the forward keeps each
/// row's statistics for the backward.
#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f32) -> FloatTensor<Self>;
    /// [`NormOps::layer_norm`] and its statistics, `[rows, 2]`: each row's mean and `1 / std`.
    fn layer_norm_keeping_stats(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f32) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The gradients of x, gamma and beta from the output's.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The optimizer's update, on parameters outside autodiff (as burn's optimizers see them).
#[backend_extension(Flex)]
pub trait OptimOps: Backend {
    /// AdamW's step ([`crate::optim`]): the parameter and the two moments after it.
    fn adamw(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Linear layers, also under autodiff: the backward of burn's own `linear`, on vitrine's products.
#[backend_extension(Flex, Autodiff)]
pub trait LinearOps: Backend {
    /// `x [rows, in] @ weight [in, out] + bias [out]`, then the exact GELU when `gelu`.
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self>;
    /// `grad [rows, out] @ weight^T`: the input's gradient.
    fn linear_x_backward(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x^T @ grad`, `[in, out]`: the weight's gradient.
    fn linear_weight_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The sum of `grad`'s rows, `[out]`: the bias's gradient.
    fn linear_bias_backward(grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Attention, also under autodiff: the forward keeps its probabilities for the backward.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionOps: Backend {
    /// `softmax(q k^T / sqrt(dim)) v` over `[batch, heads, tokens, dim]`.
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self>;
    /// [`AttentionOps::attention`] and its probabilities `[batch, heads, q, kv]`.
    fn attention_keeping_probs(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The gradients of q, k and v from the output's.
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The exact GELU, also under autodiff.
#[backend_extension(Flex, Autodiff)]
pub trait GeluOps: Backend {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad * gelu'(x)`.
    fn gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The tensor's values as one contiguous `f32` vector (no copy when it is unique and dense).
fn into_vec(x: FlexTensor) -> Vec<f32> {
    let x = if x.is_contiguous() && x.layout().start_offset() == 0 { x } else { x.to_contiguous() };
    let n = x.layout().num_elements();
    let mut values: Vec<f32> = x.into_data().try_into_vec().expect("an f32 tensor");
    values.truncate(n);
    values
}

/// The tensor itself when dense, else a dense copy: for inputs that are only read.
fn dense(x: FlexTensor) -> FlexTensor {
    if x.is_contiguous() { x } else { x.to_contiguous() }
}

fn from_vec(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

/// A 2-D tensor read in place, through its strides.
fn matrix(x: &FlexTensor) -> Matrix<'_> {
    let (shape, s) = (x.layout().shape(), x.layout().strides());
    assert_eq!(shape.num_dims(), 2, "linear: a matrix expected, got a tensor of shape {shape:?}");
    Matrix { data: x.storage::<f32>(), offset: x.layout().start_offset(), rows: s[0], cols: s[1] }
}

fn operand(x: &FlexTensor) -> Operand<'_> {
    let s = x.layout().strides();
    Operand { data: x.storage::<f32>(), offset: x.layout().start_offset(), strides: [s[0], s[1], s[2], s[3]] }
}

fn attention_dims(q: &FlexTensor, k: &FlexTensor, v: Option<&FlexTensor>) -> Dims {
    let (qs, ks) = (q.layout().shape(), k.layout().shape());
    assert_eq!((qs[0], qs[1], qs[3]), (ks[0], ks[1], ks[3]), "attention: q and k disagree on batch, heads or width");
    Dims { batch: qs[0], heads: qs[1], q_tokens: qs[2], kv_tokens: ks[2], dim: qs[3], value_dim: v.map_or(0, |v| v.layout().shape()[3]) }
}

impl InferenceOps for Flex {
    fn attention_probs(q: FlexTensor, k: FlexTensor) -> FlexTensor {
        let dims = attention_dims(&q, &k, None);
        let mut probs = vec![0.0; dims.batch * dims.heads * dims.q_tokens * dims.kv_tokens];
        let scale = 1.0 / (dims.dim as f32).sqrt();
        attention::attention(operand(&q), operand(&k), None, dims, scale, None, Some(&mut probs));
        from_vec(probs, Shape::new([dims.batch, dims.heads, dims.q_tokens, dims.kv_tokens]))
    }
}

impl Int8Ops for Flex {
    fn linear_int8(x: FlexTensor, weight: burn_flex::FlexQTensor, bias: FlexTensor, gelu: bool) -> FlexTensor {
        let x = dense(x);
        let (rows, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
        let w = weight.tensor();
        let shape = w.layout().shape();
        let d_out = shape[1];
        assert!(
            shape[0] == d_in && w.is_contiguous() && w.layout().start_offset() == 0,
            "int8 linear: input width {d_in} against a weight of {shape:?} (dense, as quantize_linear makes it)"
        );
        let packed = packed(&weight);
        // Every row of the scale grid holds the same per-column scales (see quantize_linear).
        let scales = &weight.scales()[..d_out];
        let bias = dense(bias);
        let bias = bias.as_slice::<f32>().expect("an f32 bias");
        let out = int8::forward(x.as_slice::<f32>().expect("an f32 input"), rows, &packed, scales, bias, gelu);
        from_vec(out, Shape::new([rows, d_out]))
    }
}

/// Packings of int8 weights, by the address of the weight's values. Each entry holds the weight
/// itself (a shared handle on its bytes), so that address cannot be reused by another tensor while
/// the entry lives: a packing is never taken for another weight's.
type Packings = BTreeMap<usize, (burn_flex::FlexQTensor, Arc<int8::Packed>)>;
static PACKED: Mutex<Packings> = Mutex::new(BTreeMap::new());

/// The packing of an int8 weight, made on its first use and kept while the weight lives: when a
/// packing is made, those of weights that only the cache still holds (a model dropped, or replaced
/// by another in the page) go.
fn packed(weight: &burn_flex::FlexQTensor) -> Arc<int8::Packed> {
    let values = weight.tensor().storage::<i8>();
    let key = values.as_ptr() as usize;
    if let Some((_, packed)) = PACKED.lock().expect("the packing cache").get(&key) {
        return packed.clone();
    }
    let shape = weight.tensor().layout().shape();
    let packed = Arc::new(int8::Packed::new(values, shape[0], shape[1]));
    let mut cache = PACKED.lock().expect("the packing cache");
    cache.retain(|_, (held, _)| !held.tensor().is_unique());
    cache.insert(key, (weight.clone(), packed.clone()));
    packed
}

/// How many weights the packing cache holds.
#[cfg(test)]
pub(crate) fn packings() -> usize {
    PACKED.lock().expect("the packing cache").len()
}

/// LayerNorm's forward on flex, with the statistics when `keep_stats`.
fn layer_norm_forward(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f32, keep_stats: bool) -> (FlexTensor, Option<FlexTensor>) {
    let shape = x.layout().shape().clone();
    let rows = shape[0];
    let (x, gamma, beta) = (dense(x), dense(gamma), dense(beta));
    let x = x.as_slice::<f32>().expect("an f32 input");
    let mut out = vec![0f32; x.len()];
    let mut stats = keep_stats.then(|| vec![0f32; 2 * rows]);
    let (gamma, beta) = (gamma.as_slice::<f32>().expect("an f32 gamma"), beta.as_slice::<f32>().expect("an f32 beta"));
    norm::forward(x, gamma, beta, epsilon, &mut out, stats.as_deref_mut());
    (from_vec(out, shape), stats.map(|s| from_vec(s, Shape::new([rows, 2]))))
}

impl NormOps for Flex {
    fn layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f32) -> FlexTensor {
        layer_norm_forward(x, gamma, beta, epsilon, false).0
    }

    fn layer_norm_keeping_stats(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f32) -> (FlexTensor, FlexTensor) {
        let (out, stats) = layer_norm_forward(x, gamma, beta, epsilon, true);
        (out, stats.expect("kept"))
    }

    fn layer_norm_backward(x: FlexTensor, gamma: FlexTensor, stats: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let width = shape[1];
        let (x, gamma, stats, grad) = (dense(x), dense(gamma), dense(stats), dense(grad));
        let (dx, dgamma, dbeta) = norm::backward(
            x.as_slice::<f32>().expect("an f32 input"),
            gamma.as_slice::<f32>().expect("an f32 gamma"),
            stats.as_slice::<f32>().expect("f32 statistics"),
            grad.as_slice::<f32>().expect("an f32 gradient"),
        );
        (from_vec(dx, shape), from_vec(dgamma, Shape::new([width])), from_vec(dbeta, Shape::new([width])))
    }
}

impl<B: Backend + NormOps, C: CheckpointStrategy> NormOps for Autodiff<B, C> {
    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: Backend + NormOps> Backward<B, 3> for LayerNormBackward {
            /// x, gamma and the statistics.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, stats) = ops.state;
                let (dx, dgamma, dbeta) = <B as NormOps>::layer_norm_backward(x, gamma, stats, grad);
                for (node, grad) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LayerNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let (out, stats) = <B as NormOps>::layer_norm_keeping_stats(x.clone(), gamma.clone(), beta.into_primitive(), epsilon);
                prep.finish((x, gamma, stats), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<B as NormOps>::layer_norm(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon))
            }
        }
    }

    fn layer_norm_keeping_stats(_: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("LayerNorm's statistics are kept inside its own backward node")
    }

    fn layer_norm_backward(_: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("LayerNorm's backward is not differentiated again")
    }
}

impl OptimOps for Flex {
    fn adamw(param: FlexTensor, grad: FlexTensor, moment_1: FlexTensor, moment_2: FlexTensor, step: AdamWStep) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.layout().shape().clone();
        // In place where the buffers are the optimizer's alone (they are, step after step).
        let (mut param, grad, mut m, mut v) = (into_vec(param), dense(grad), into_vec(moment_1), into_vec(moment_2));
        let grad = grad.as_slice::<f32>().expect("an f32 gradient");
        optim::adamw_update(AdamWBuffers { param: &mut param, grad, moment_1: &mut m, moment_2: &mut v }, step);
        (from_vec(param, shape.clone()), from_vec(m, shape.clone()), from_vec(v, shape))
    }
}

impl LinearOps for Flex {
    fn linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, gelu: bool) -> FlexTensor {
        let (rows, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
        let d_out = weight.layout().shape()[1];
        assert_eq!(weight.layout().shape()[0], d_in, "linear: input width {d_in} against a weight of {:?}", weight.layout().shape());
        let bias = dense(bias);
        let bias = bias.as_slice::<f32>().expect("an f32 bias");
        assert_eq!(bias.len(), d_out, "linear: a bias of {} for {d_out} outputs", bias.len());
        from_vec(linear::forward(matrix(&x), matrix(&weight), bias, rows, d_in, gelu), Shape::new([rows, d_out]))
    }

    fn linear_x_backward(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (d_in, d_out) = (weight.layout().shape()[0], weight.layout().shape()[1]);
        let rows = grad.layout().shape()[0];
        from_vec(linear::product(matrix(&grad), matrix(&weight).t(), rows, d_out, d_in), Shape::new([rows, d_in]))
    }

    fn linear_weight_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (rows, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
        let d_out = grad.layout().shape()[1];
        from_vec(linear::product(matrix(&x).t(), matrix(&grad), d_in, rows, d_out), Shape::new([d_in, d_out]))
    }

    fn linear_bias_backward(grad: FlexTensor) -> FlexTensor {
        let d_out = grad.layout().shape()[1];
        let grad = dense(grad);
        from_vec(linear::column_sums(grad.as_slice::<f32>().expect("an f32 gradient"), d_out), Shape::new([d_out]))
    }
}

impl<B: Backend + LinearOps + GeluOps, C: CheckpointStrategy> LinearOps for Autodiff<B, C> {
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self> {
        // As burn's own linear node: x is kept only for the weight's gradient, the weight only for x's.
        #[derive(Debug)]
        struct LinearBackward;

        impl<B: Backend + LinearOps> Backward<B, 3> for LinearBackward {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight, node_bias] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                if let Some(node) = node_x {
                    let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight.expect("the weight, kept"));
                    grads.register::<B>(node.id, <B as LinearOps>::linear_x_backward(weight, grad.clone()));
                }
                if let Some(node) = node_weight {
                    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x.expect("the input, kept"));
                    grads.register::<B>(node.id, <B as LinearOps>::linear_weight_backward(x, grad.clone()));
                }
                if let Some(node) = node_bias {
                    grads.register::<B>(node.id, <B as LinearOps>::linear_bias_backward(grad));
                }
            }
        }

        if gelu {
            // GELU's own node keeps the product for its backward.
            return <Self as GeluOps>::gelu(<Self as LinearOps>::linear(x, weight, bias, false));
        }
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        match LinearBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = weight_tracked.then(|| prep.checkpoint(&x));
                let weight_state = x_tracked.then(|| prep.checkpoint(&weight));
                let out = <B as LinearOps>::linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), false);
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as LinearOps>::linear(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), false)),
        }
    }

    fn linear_x_backward(_: FloatTensor<Self>, _: FloatTensor<Self>) -> FloatTensor<Self> {
        unimplemented!("a Linear layer's backward is not differentiated again")
    }

    fn linear_weight_backward(_: FloatTensor<Self>, _: FloatTensor<Self>) -> FloatTensor<Self> {
        unimplemented!("a Linear layer's backward is not differentiated again")
    }

    fn linear_bias_backward(_: FloatTensor<Self>) -> FloatTensor<Self> {
        unimplemented!("a Linear layer's backward is not differentiated again")
    }
}

/// A `[batch, heads, tokens, dim]` view of a buffer written `[batch, tokens, heads, dim]`.
fn heads_view(values: Vec<f32>, batch: usize, heads: usize, tokens: usize, dim: usize) -> FlexTensor {
    let strides = vec![(tokens * heads * dim) as isize, dim as isize, (heads * dim) as isize, 1];
    let layout = Layout::new(Shape::new([batch, heads, tokens, dim]), strides, 0);
    FlexTensor::new(burn::tensor::Bytes::from_elems(values), layout, DType::F32)
}

/// The attention output (and, with `keep_probs`, its probabilities).
fn attention_forward(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, keep_probs: bool) -> (FlexTensor, Option<FlexTensor>) {
    let dims = attention_dims(q, k, Some(v));
    let Dims { batch, heads, q_tokens, kv_tokens, value_dim, .. } = dims;
    let mut out = vec![0.0; batch * q_tokens * heads * value_dim];
    let mut probs = keep_probs.then(|| vec![0.0; batch * heads * q_tokens * kv_tokens]);
    let scale = 1.0 / (dims.dim as f32).sqrt();
    attention::attention(operand(q), operand(k), Some(operand(v)), dims, scale, Some(&mut out), probs.as_deref_mut());
    let probs = probs.map(|p| from_vec(p, Shape::new([batch, heads, q_tokens, kv_tokens])));
    (heads_view(out, batch, heads, q_tokens, value_dim), probs)
}

impl AttentionOps for Flex {
    fn attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        attention_forward(&q, &k, &v, false).0
    }

    fn attention_keeping_probs(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> (FlexTensor, FlexTensor) {
        let (out, probs) = attention_forward(&q, &k, &v, true);
        (out, probs.expect("probabilities kept"))
    }

    fn attention_backward(q: FlexTensor, k: FlexTensor, v: FlexTensor, probs: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = attention_dims(&q, &k, Some(&v));
        let Dims { batch, heads, q_tokens, kv_tokens, dim, value_dim } = dims;
        let probs = dense(probs);
        let probs = probs.as_slice::<f32>().expect("f32 probabilities");
        let scale = 1.0 / (dim as f32).sqrt();
        let (dq, dk, dv) = attention::attention_backward(operand(&q), operand(&k), operand(&v), probs, operand(&grad), dims, scale);
        (
            heads_view(dq, batch, heads, q_tokens, dim),
            heads_view(dk, batch, heads, kv_tokens, dim),
            heads_view(dv, batch, heads, kv_tokens, value_dim),
        )
    }
}

impl<B: Backend + AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + AttentionOps> Backward<B, 3> for AttentionBackward {
            /// q, k, v and the probabilities.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v, probs) = ops.state;
                let (dq, dk, dv) = <B as AttentionOps>::attention_backward(q, k, v, probs, grad);
                for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match AttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let (out, probs) = <B as AttentionOps>::attention_keeping_probs(q.clone(), k.clone(), v.clone());
                prep.finish((q, k, v, probs), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<B as AttentionOps>::attention(q.into_primitive(), k.into_primitive(), v.into_primitive()))
            }
        }
    }

    fn attention_keeping_probs(_: FloatTensor<Self>, _: FloatTensor<Self>, _: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("attention's probabilities are kept inside its own backward node")
    }

    fn attention_backward(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!("attention's backward is not differentiated again")
    }
}

impl GeluOps for Flex {
    fn gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        let shape = x.layout().shape().clone();
        if x.is_unique() {
            let mut values = into_vec(x);
            elementwise::gelu_in_place(&mut values);
            return from_vec(values, shape);
        }
        // Kept elsewhere (autodiff keeps GELU's input): read it, write a new buffer.
        let x = dense(x);
        let x = x.as_slice::<f32>().expect("an f32 input");
        let mut out = vec![0.0f32; x.len()];
        elementwise::gelu_into(x, &mut out);
        from_vec(out, shape)
    }

    fn gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.layout().shape() != grad.layout().shape() {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x, grad);
        }
        let shape = grad.layout().shape().clone();
        let x = dense(x);
        let mut grad = into_vec(grad);
        elementwise::gelu_backward_in_place(x.as_slice::<f32>().expect("an f32 input"), &mut grad);
        from_vec(grad, shape)
    }
}

impl<B: Backend + GeluOps, C: CheckpointStrategy> GeluOps for Autodiff<B, C> {
    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: Backend + GeluOps> Backward<B, 1> for GeluBackward {
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let input = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| <B as GeluOps>::gelu_backward(input, grad));
            }
        }

        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.primitive().clone();
                prep.finish(input.clone(), <B as GeluOps>::gelu(input))
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as GeluOps>::gelu(x.into_primitive())),
        }
    }

    fn gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu_backward(x, grad)
    }
}
