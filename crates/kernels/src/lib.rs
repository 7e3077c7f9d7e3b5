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
pub mod int8;
pub mod linear;
mod math;
pub mod norm;
pub mod optim;
mod parallel;
pub mod simd;

use burn::backend::Dispatch;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, Tensor, TensorData};

pub use parallel::on_pool;

use extension::{AttentionOps, GeluOps, InferenceOps, Int8Ops, LinearOps, NormOps, OptimOps};

/// Deterministic values in [-2, 2) (xorshift) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect()
}

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
///
/// Under autodiff off flex it is written out as burn's forward writes it, `x (1 + erf(x / sqrt 2)) / 2`,
/// so that the gradient is the exact one: burn's default `gelu_backward` (burn-cubecl's: wgpu, CUDA)
/// is the derivative of the tanh approximation, off by up to 8.7e-4 near x = -2 (flex's own is exact).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !kernels_serve(&x) {
        if x.device().is_autodiff() {
            return x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) / 2.0;
        }
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

/// `layer` with its weight held as int8, one scale per output column, for [`int8`]'s integer
/// products: on the flex CPU backend without autodiff, where this CPU has them; elsewhere `layer`
/// as it is. Quantizing weights that already are int8 per column (an int8 bundle's, rebuilt in f32
/// at load) gives back the same integers.
pub fn quantize_linear(layer: Linear) -> Linear {
    let weight = layer.weight.val();
    let [d_in, d_out] = weight.dims();
    let device = weight.device();
    if holds_int8(&layer) || weight.dtype() != DType::F32 || !int8_serves(&device) || int8_block(d_in).is_none() {
        return layer;
    }
    let values: Vec<f32> = weight.into_data().try_to_vec().expect("an f32 weight");
    let (q, scales) = int8::quantize_columns(&values, d_out);
    let weight = int8_weight(q, &scales, d_in, &device).expect("a block was found above");
    Linear { weight: layer.weight.map(|_| weight), ..layer }
}

/// A Linear weight `[d_in, d_out]` held as int8 for [`int8`]'s products, from integers stored per
/// output channel in PyTorch's layout (`q_out_in`, `[d_out, d_in]`, as int8 bundles hold them)
/// and their scales: the stored integers themselves, with no f32 in between. `None` where the
/// products do not serve `device`.
pub fn int8_weight_from_rows(q_out_in: &[i8], scales: &[f32], d_in: usize, device: &Device) -> Option<Tensor<2>> {
    let d_out = scales.len();
    assert_eq!(q_out_in.len(), d_in * d_out, "int8 weight: {} values for [{d_out}, {d_in}]", q_out_in.len());
    if !int8_serves(device) || int8_block(d_in).is_none() {
        return None;
    }
    let mut q = vec![0i8; q_out_in.len()];
    transpose::transpose(q_out_in, &mut q, d_in, d_out);
    int8_weight(q, scales, d_in, device)
}

/// Whether [`int8`]'s products serve `device`: flex without autodiff, on a CPU that has them.
fn int8_serves(device: &Device) -> bool {
    runs_on_flex(device) && !device.is_autodiff() && int8::available()
}

/// The side of the scale blocks for an input width `d_in` (burn's block sides are at most 255).
fn int8_block(d_in: usize) -> Option<usize> {
    (16..=255.min(d_in)).rev().find(|b| d_in.is_multiple_of(*b))
}

/// The int8 weight tensor of `q` (`[d_in, d_out]`, row-major) with per-column `scales`.
fn int8_weight(q: Vec<i8>, scales: &[f32], d_in: usize, device: &Device) -> Option<Tensor<2>> {
    let (d_out, block) = (scales.len(), int8_block(d_in)?);
    let scheme = QuantScheme::default().with_value(QuantValue::Q8S).with_store(QuantStore::Native).per_block([block as u8, 1], ScaleDtype::F32);
    // The scales are stored per block of `[block, 1]`: the same row of per-column scales repeated
    // `d_in / block` times.
    let grid: Vec<f32> = scales.iter().copied().cycle().take(d_in / block * d_out).collect();
    Some(Tensor::from_data(TensorData::quantized(q, [d_in, d_out], scheme, &grid, None), device))
}

/// Whether `layer`'s weight is one [`quantize_linear`] made.
fn holds_int8(layer: &Linear) -> bool {
    matches!(layer.weight.val().dtype(), DType::QFloat(_))
}

/// vitrine's Linear, or the input back when the kernel does not serve it.
#[allow(clippy::result_large_err)] // the error is the input tensor, handed back unchanged
fn linear_then<const D: usize>(layer: &Linear, x: Tensor<D>, with_gelu: bool) -> Result<Tensor<D>, Tensor<D>> {
    let Some(bias) = &layer.bias else { return Err(x) };
    let int8 = inference_on_flex(&x) && holds_int8(layer);
    let f32 = kernels_serve(&x) && layer.weight.val().dtype() == DType::F32;
    if !(int8 || f32) {
        return Err(x);
    }
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, dims[D - 1]]).into_dispatch();
    let (weight, bias) = (layer.weight.val().into_dispatch(), bias.val().into_dispatch());
    let out = if int8 {
        <Dispatch as Int8Ops>::linear_int8(x, weight, bias, with_gelu)
    } else {
        <Dispatch as LinearOps>::linear(x, weight, bias, with_gelu)
    };
    let mut shape = dims;
    shape[D - 1] = layer.weight.dims()[1];
    Ok(Tensor::<2>::from_dispatch(out).reshape(shape))
}

/// `norm.forward(x)`: LayerNorm over the last axis, forward and backward in one pass each on flex.
/// `epsilon` is the one `norm` was built with (burn keeps its own private).
pub fn layer_norm<const D: usize>(norm: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    let Some(beta) = &norm.beta else { return norm.forward(x) };
    if !kernels_serve(&x) {
        return norm.forward(x);
    }
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, dims[D - 1]]).into_dispatch();
    let out = <Dispatch as NormOps>::layer_norm(x, norm.gamma.val().into_dispatch(), beta.val().into_dispatch(), epsilon as f32);
    Tensor::<2>::from_dispatch(out).reshape(dims)
}

/// Whether [`adamw`] serves this parameter and gradient: f32 on flex, outside autodiff (as burn's
/// optimizers hand them over), of one shape.
pub fn adamw_serves<const D: usize>(param: &Tensor<D>, grad: &Tensor<D>) -> bool {
    inference_on_flex(param) && inference_on_flex(grad) && param.shape() == grad.shape()
}

/// AdamW's step on `param` in one pass ([`optim`]): the parameter and its two moments after it,
/// updated in place where no other tensor holds their buffers. Only where [`adamw_serves`].
pub fn adamw<const D: usize>(param: Tensor<D>, grad: Tensor<D>, moments: (Tensor<D>, Tensor<D>), step: optim::AdamWStep) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    assert!(adamw_serves(&param, &grad), "adamw: f32 tensors of one shape on flex expected");
    let [p, g, m, v] = [param, grad, moments.0, moments.1].map(|t| t.into_dispatch());
    let (p, m, v) = <Dispatch as OptimOps>::adamw(p, g, m, v, step);
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    /// A weight is packed once, and its packing goes once the weight is dropped (at the next
    /// packing made): switching models does not keep the old one's weights alive.
    #[test]
    fn packings_go_with_their_weights() {
        if !int8::available() {
            eprintln!("no integer kernel on this CPU: nothing to check");
            return;
        }
        let device = Device::flex();
        let x = Tensor::<2>::ones([2, 32], &device);
        let first = quantize_linear(LinearConfig::new(32, 16).init(&device));
        linear(&first, x.clone());
        let held = extension::packings();
        linear(&first, x.clone());
        assert_eq!(extension::packings(), held, "packed once");
        drop(first);
        let second = quantize_linear(LinearConfig::new(32, 16).init(&device));
        linear(&second, x.clone());
        assert_eq!(extension::packings(), held, "the dropped weight's packing went");
        let third = quantize_linear(LinearConfig::new(32, 16).init(&device));
        linear(&third, x);
        assert_eq!(extension::packings(), held + 1, "a weight still in use keeps its packing");
        drop(second);
    }
}
