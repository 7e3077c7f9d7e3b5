//! The kernels as burn backend extensions: [`InferenceOps`] on flex, [`GeluOps`] on flex and under
//! autodiff (with its own backward). Other backends never reach these traits (see `lib.rs`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{DType, Shape};
use burn_flex::{FlexTensor, Layout};

use crate::attention::{self, Dims, Operand};
use crate::elementwise;

/// Operations used without gradients: the model's forward at inference.
#[backend_extension(Flex)]
pub trait InferenceOps: Backend {
    /// `x [rows, in] @ weight [in, out] + bias [out]`, then the exact GELU when `gelu`.
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, gelu: bool) -> FloatTensor<Self>;
    /// `softmax(q k^T / sqrt(dim)) v` over `[batch, heads, tokens, dim]`.
    fn attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `softmax(q k^T / sqrt(dim))`, `[batch, heads, q, kv]`.
    fn attention_probs(q: FloatTensor<Self>, k: FloatTensor<Self>) -> FloatTensor<Self>;
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
    fn linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, gelu: bool) -> FlexTensor {
        let (xs, ws) = (x.layout().shape(), weight.layout().shape());
        let (m, k, n) = (xs[0], xs[1], ws[1]);
        assert_eq!(ws[0], k, "linear: input width {k} against a weight of {ws:?}");
        let bias = dense(bias);
        let bias = bias.as_slice::<f32>().expect("an f32 bias");
        let mut out = vec![0.0f32; m * n];
        let (xl, wl) = (x.layout(), weight.layout());
        let parallelism = crate::parallel::gemm_parallelism(m * n * k);
        // SAFETY: both operands are read within their layouts; `out` is m x n, row-major.
        unsafe {
            gemm::gemm(
                m, n, k,
                out.as_mut_ptr(), 1, n as isize, false,
                x.storage::<f32>().as_ptr().add(xl.start_offset()), xl.strides()[1], xl.strides()[0],
                weight.storage::<f32>().as_ptr().add(wl.start_offset()), wl.strides()[1], wl.strides()[0],
                0.0, 1.0, false, false, false, parallelism,
            );
        }
        elementwise::add_bias_in_place(&mut out, bias, gelu);
        from_vec(out, Shape::new([m, n]))
    }

    fn attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        let dims = attention_dims(&q, &k, Some(&v));
        let mut out = vec![0.0; dims.batch * dims.q_tokens * dims.heads * dims.value_dim];
        let scale = 1.0 / (dims.dim as f32).sqrt();
        attention::attention(operand(&q), operand(&k), Some(operand(&v)), dims, scale, Some(&mut out), None);
        // Written [batch, tokens, heads, dim]; viewed [batch, heads, tokens, dim] like burn's.
        let Dims { batch, heads, q_tokens, value_dim, .. } = dims;
        let strides = vec![(q_tokens * heads * value_dim) as isize, value_dim as isize, (heads * value_dim) as isize, 1];
        let layout = Layout::new(Shape::new([batch, heads, q_tokens, value_dim]), strides, 0);
        FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout, DType::F32)
    }

    fn attention_probs(q: FlexTensor, k: FlexTensor) -> FlexTensor {
        let dims = attention_dims(&q, &k, None);
        let mut probs = vec![0.0; dims.batch * dims.heads * dims.q_tokens * dims.kv_tokens];
        let scale = 1.0 / (dims.dim as f32).sqrt();
        attention::attention(operand(&q), operand(&k), None, dims, scale, None, Some(&mut probs));
        from_vec(probs, Shape::new([dims.batch, dims.heads, dims.q_tokens, dims.kv_tokens]))
    }
}

impl GeluOps for Flex {
    fn gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return <Flex as ActivationOps<Flex>>::gelu(x);
        }
        let shape = x.layout().shape().clone();
        let mut values = into_vec(x);
        elementwise::gelu_in_place(&mut values);
        from_vec(values, shape)
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
