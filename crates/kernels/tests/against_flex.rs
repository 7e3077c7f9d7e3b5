//! Every kernel against burn flex's own operation on random inputs of a ViT's shapes.
//!
//! Tolerances: 1e-6 absolute for GELU and its gradient (both elementwise, see `elementwise.rs`);
//! 1e-5 relative to the largest output for products and attention (sums of hundreds of f32
//! products, accumulated in another order than flex's).

use burn::nn::LinearConfig;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::attention;
use burn::tensor::{Device, Distribution, Tensor};

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> (f32, f32) {
    let scale: f32 = b.clone().abs().max().into_scalar();
    ((a - b).abs().max().into_scalar(), scale)
}

fn assert_close<const D: usize>(got: Tensor<D>, want: Tensor<D>, relative: f32, what: &str) {
    let (diff, scale) = max_abs_diff(got, want);
    assert!(diff <= relative * scale.max(1.0), "{what}: max |diff| {diff} against max |value| {scale}");
}

#[test]
fn gelu_matches_flex_forward_and_backward() {
    let device = Device::flex().autodiff();
    for shape in [[1, 257, 1536], [3, 7, 5]] {
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, 3.0), &device).require_grad();
        let ours = vitrine_kernels::gelu(x.clone());
        let theirs = gelu(x.clone());
        assert_close(ours.clone().detach(), theirs.clone().detach(), 1e-6, "gelu");
        let weights = Tensor::<3>::random(shape, Distribution::Default, &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_theirs = (theirs * weights).sum().backward();
        assert_close(x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap(), 1e-6, "gelu gradient");
    }
}

#[test]
fn linear_matches_flex() {
    let device = Device::flex();
    // Products split over threads by columns (rows <= width) or by rows, in parts that do not fall
    // on the kernel's tile sizes; the last is too small to split.
    for (rows, d_in, d_out) in [(257, 384, 1152), (2 * 197, 768, 3072), (300, 64, 1000), (1031, 96, 40), (5, 3, 7)] {
        let layer = LinearConfig::new(d_in, d_out).init(&device);
        let x = Tensor::<3>::random([1, rows, d_in], Distribution::Default, &device);
        assert_close(vitrine_kernels::linear(&layer, x.clone()), layer.forward(x.clone()), 1e-5, "linear");
        // A transposed (non-contiguous) input reads through its strides.
        let xt = Tensor::<3>::random([1, d_in, rows], Distribution::Default, &device).swap_dims(1, 2);
        assert_close(vitrine_kernels::linear(&layer, xt.clone()), layer.forward(xt), 1e-5, "linear, strided input");
    }
}

#[test]
fn linear_gradients_match_flex() {
    let device = Device::flex().autodiff();
    for (rows, d_in, d_out, gelu) in [(257, 384, 1536, true), (2 * 197, 768, 768, false), (1031, 96, 40, false), (5, 3, 7, false)] {
        let layer = LinearConfig::new(d_in, d_out).init(&device);
        let x = Tensor::<3>::random([1, rows, d_in], Distribution::Default, &device).require_grad();
        let weights = Tensor::<3>::random([1, rows, d_out], Distribution::Default, &device);
        let (ours, theirs) = if gelu {
            (vitrine_kernels::linear_gelu(&layer, x.clone()), burn::tensor::activation::gelu(layer.forward(x.clone())))
        } else {
            (vitrine_kernels::linear(&layer, x.clone()), layer.forward(x.clone()))
        };
        assert_close(ours.clone().detach(), theirs.clone().detach(), 1e-5, "linear under autodiff");
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_theirs = (theirs * weights).sum().backward();
        let grads = |g| (x.grad(g).unwrap(), layer.weight.grad(g).unwrap(), layer.bias.as_ref().unwrap().grad(g).unwrap());
        let ((dx, dw, db), (dx_f, dw_f, db_f)) = (grads(&g_ours), grads(&g_theirs));
        assert_close(dx, dx_f, 1e-5, "input gradient");
        assert_close(dw, dw_f, 1e-5, "weight gradient");
        assert_close(db, db_f, 1e-5, "bias gradient");
    }
}

#[test]
fn linear_gradients_skip_frozen_parts() {
    // A frozen layer (no parameter gradients) still passes the input's gradient on, and an input
    // without gradients still gives the weight's.
    let device = Device::flex().autodiff();
    let frozen = burn::module::Module::set_require_grad(LinearConfig::new(8, 4).init(&device), false);
    let x = Tensor::<2>::random([3, 8], Distribution::Default, &device).require_grad();
    let g = vitrine_kernels::linear(&frozen, x.clone()).sum().backward();
    assert!(x.grad(&g).is_some() && frozen.weight.grad(&g).is_none());
    let layer = LinearConfig::new(8, 4).init(&device);
    let g = vitrine_kernels::linear(&layer, Tensor::<2>::ones([3, 8], &device)).sum().backward();
    let dw = layer.weight.grad(&g).unwrap();
    assert_close(dw, Tensor::ones([8, 4], &Device::flex()) * 3.0, 1e-6, "weight gradient of ones");
}

#[test]
fn attention_matches_flex_on_split_heads() {
    let device = Device::flex();
    for (batch, heads, tokens, dim) in [(1, 6, 257, 64), (2, 3, 197, 64), (1, 2, 5, 4)] {
        // Heads split from one projection output, as the model does: strided, not contiguous.
        let split = || {
            Tensor::<3>::random([batch, tokens, heads * dim], Distribution::Normal(0.0, 2.0), &device)
                .reshape([batch, tokens, heads, dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(), split(), split());
        let want = attention(q.clone(), k.clone(), v.clone(), None, None, Default::default());
        assert_close(vitrine_kernels::attention(q.clone(), k.clone(), v), want, 1e-5, "attention");
        let probs = softmax(q.clone().matmul(k.clone().swap_dims(2, 3)) / (dim as f64).sqrt(), 3);
        assert_close(vitrine_kernels::attention_probs(q, k), probs, 1e-5, "attention probabilities");
    }
}

#[test]
fn autodiff_products_keep_burns_gradients() {
    // Under autodiff, linear and attention are burn's: gradients flow as before.
    let device = Device::flex().autodiff();
    let layer = LinearConfig::new(8, 4).init(&device);
    let x = Tensor::<3>::random([1, 3, 8], Distribution::Default, &device).require_grad();
    let grads = vitrine_kernels::linear(&layer, x.clone()).sum().backward();
    assert_eq!(x.grad(&grads).unwrap().dims(), [1, 3, 8]);
}

#[test]
fn attention_gradients_match_flex() {
    let device = Device::flex().autodiff();
    for (batch, heads, tokens, dim) in [(2, 6, 197, 64), (1, 2, 5, 4)] {
        let split = |x: Tensor<3>| x.reshape([batch, tokens, heads, dim]).swap_dims(1, 2);
        let leaf = || Tensor::<3>::random([batch, tokens, heads * dim], Distribution::Normal(0.0, 2.0), &device).require_grad();
        let (q, k, v) = (leaf(), leaf(), leaf());
        let weights = Tensor::<4>::random([batch, heads, tokens, dim], Distribution::Default, &device);
        let ours = vitrine_kernels::attention(split(q.clone()), split(k.clone()), split(v.clone()));
        let theirs = attention(split(q.clone()), split(k.clone()), split(v.clone()), None, None, Default::default());
        assert_close(ours.clone().detach(), theirs.clone().detach(), 1e-5, "attention under autodiff");
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_theirs = (theirs * weights).sum().backward();
        for (x, what) in [(&q, "query gradient"), (&k, "key gradient"), (&v, "value gradient")] {
            assert_close(x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap(), 1e-5, what);
        }
    }
}

#[test]
fn an_int8_linear_computes_on_integers_near_the_f32_one() {
    if !vitrine_kernels::int8::available() {
        eprintln!("no integer kernel on this CPU: nothing to check");
        return;
    }
    let device = Device::flex();
    for (rows, d_in, d_out, gelu) in [(197, 384, 1536, true), (2 * 197, 1536, 384, false), (5, 64, 24, false)] {
        let layer = LinearConfig::new(d_in, d_out).init(&device);
        let int8 = vitrine_kernels::quantize_linear(layer.clone());
        assert!(matches!(int8.weight.val().dtype(), burn::tensor::DType::QFloat(_)), "{d_in}x{d_out}: the weight is int8");
        let x = Tensor::<3>::random([1, rows, d_in], Distribution::Default, &device);
        let (ours, theirs) = if gelu {
            (vitrine_kernels::linear_gelu(&int8, x.clone()), vitrine_kernels::linear_gelu(&layer, x.clone()))
        } else {
            (vitrine_kernels::linear(&int8, x.clone()), vitrine_kernels::linear(&layer, x.clone()))
        };
        // Burn's own product on the same int8 weight (dequantized) gives the weight's rounding
        // alone; the integer kernel adds the activations' rounding, well under 1 % of the output.
        let error = (ours.clone() - theirs.clone()).powi_scalar(2).mean().sqrt().into_scalar::<f32>();
        let scale = theirs.powi_scalar(2).mean().sqrt().into_scalar::<f32>();
        assert!(error / scale < 0.01, "{d_in}x{d_out}: relative RMS error {}", error / scale);
        let burns = int8.forward(x.clone());
        let ours = vitrine_kernels::linear(&int8, x);
        let gap = (ours - burns.clone()).powi_scalar(2).mean().sqrt().into_scalar::<f32>() / burns.powi_scalar(2).mean().sqrt().into_scalar::<f32>();
        assert!(gap < 0.01, "{d_in}x{d_out}: against burn's dequantized product {gap}");
    }
    // Autodiff devices and f32 weights elsewhere keep the layer as it is.
    let trained = vitrine_kernels::quantize_linear(LinearConfig::new(64, 8).init(&Device::flex().autodiff()));
    assert_eq!(trained.weight.val().dtype(), burn::tensor::DType::F32);
}

#[test]
fn layer_norm_matches_flex_forward_and_backward() {
    let device = Device::flex().autodiff();
    for (shape, epsilon) in [([2, 257, 384], 1e-6), ([3, 7, 5], 1e-5)] {
        let width = shape[2];
        let mut norm = burn::nn::LayerNormConfig::new(width).with_epsilon(epsilon).init(&device);
        norm.gamma = norm.gamma.map(|_| Tensor::<1>::random([width], Distribution::Normal(1.0, 0.5), &device).require_grad());
        norm.beta = norm.beta.map(|b| b.map(|_| Tensor::<1>::random([width], Distribution::Normal(0.0, 0.5), &device).require_grad()));
        let x = Tensor::<3>::random(shape, Distribution::Normal(0.5, 2.0), &device).require_grad();
        let ours = vitrine_kernels::layer_norm(&norm, epsilon, x.clone());
        let theirs = norm.forward(x.clone());
        assert_close(ours.clone().detach(), theirs.clone().detach(), 1e-5, "layer norm");
        let weights = Tensor::<3>::random(shape, Distribution::Default, &device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_theirs = (theirs * weights).sum().backward();
        let beta = norm.beta.as_ref().unwrap();
        assert_close(x.grad(&g_ours).unwrap(), x.grad(&g_theirs).unwrap(), 1e-5, "layer norm: input gradient");
        assert_close(norm.gamma.grad(&g_ours).unwrap(), norm.gamma.grad(&g_theirs).unwrap(), 1e-5, "layer norm: gamma gradient");
        assert_close(beta.grad(&g_ours).unwrap(), beta.grad(&g_theirs).unwrap(), 1e-5, "layer norm: beta gradient");
    }
}
