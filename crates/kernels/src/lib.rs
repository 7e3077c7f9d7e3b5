//! vitrine-kernels: CPU kernels of vitrine's own where burn's flex backend is slow, and the
//! tensor-level functions the model calls instead of burn's (`linear`, `gelu`, `attention`).
//!
//! Each function runs vitrine's kernel when its input lives on the flex CPU backend (plain or
//! under autodiff) and burn's own operation everywhere else (WebGPU, CUDA, ...), so the model code
//! stays backend-generic. The kernels work on `f32` buffers, written once over [`simd::F32x`] and
//! compiled for AVX-512, AVX2 + FMA and wasm simd128 (chosen at run time on x86-64). Matrix
//! products go through the `gemm` crate, as in flex, with burn-flex's AVX-512 kernels enabled.

pub mod attention;
pub mod elementwise;
mod extension;
pub mod linear;
mod math;
mod parallel;
pub mod simd;

use burn::backend::Dispatch;
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor};

use extension::{AttentionOps, GeluOps, InferenceOps, LinearOps};

/// Whether `device` is the flex CPU backend, plain or under autodiff.
pub fn runs_on_flex(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

/// Whether vitrine's kernels serve `x`: an f32 tensor on flex, plain or under autodiff.
fn kernels_serve<const D: usize>(x: &Tensor<D>) -> bool {
    runs_on_flex(&x.device()) && x.dtype() == DType::F32
}

/// Whether the kernels without a backward pass serve `x`: as [`kernels_serve`], no gradients recorded.
fn inference_on_flex<const D: usize>(x: &Tensor<D>) -> bool {
    kernels_serve(x) && !x.device().is_autodiff()
}

/// The exact (erf) GELU.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !kernels_serve(&x) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as GeluOps>::gelu(x.into_dispatch()))
}

/// `layer.forward(x)`, the bias added in the pass that follows the product.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_then(layer, x, false).unwrap_or_else(|x| layer.forward(x))
}

/// `gelu(layer.forward(x))`, the bias and the GELU in one pass over the output.
pub fn linear_gelu<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_then(layer, x, true).unwrap_or_else(|x| gelu(layer.forward(x)))
}

/// vitrine's Linear, or the input back when the kernel does not serve it.
#[allow(clippy::result_large_err)] // the error is the input tensor, handed back unchanged
fn linear_then<const D: usize>(layer: &Linear, x: Tensor<D>, with_gelu: bool) -> Result<Tensor<D>, Tensor<D>> {
    match &layer.bias {
        Some(bias) if kernels_serve(&x) && layer.weight.val().dtype() == DType::F32 => {
            let dims = x.dims();
            let rows = dims[..D - 1].iter().product::<usize>();
            let x2 = x.reshape([rows, dims[D - 1]]);
            let (weight, bias) = (layer.weight.val().into_dispatch(), bias.val().into_dispatch());
            let out = <Dispatch as LinearOps>::linear(x2.into_dispatch(), weight, bias, with_gelu);
            let mut shape = dims;
            shape[D - 1] = layer.weight.dims()[1];
            Ok(Tensor::<2>::from_dispatch(out).reshape(shape))
        }
        _ => Err(x),
    }
}

/// Scaled dot-product attention `softmax(q k^T / sqrt(dim)) v` over `[batch, heads, tokens, dim]`,
/// as `burn::tensor::module::attention` with no mask or bias.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if !kernels_serve(&q) {
        return burn::tensor::module::attention(q, k, v, None, None, Default::default());
    }
    Tensor::from_dispatch(<Dispatch as AttentionOps>::attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch()))
}

/// The attention probabilities `softmax(q k^T / sqrt(dim))` (`[batch, heads, q, kv]`), for maps.
pub fn attention_probs(q: Tensor<4>, k: Tensor<4>) -> Tensor<4> {
    if !inference_on_flex(&q) {
        let dim = q.dims()[3];
        return burn::tensor::activation::softmax(q.matmul(k.swap_dims(2, 3)) / (dim as f64).sqrt(), 3);
    }
    Tensor::from_dispatch(<Dispatch as InferenceOps>::attention_probs(q.into_dispatch(), k.into_dispatch()))
}
