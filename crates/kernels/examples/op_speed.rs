//! Times each kernel at a ViT's shapes against flex's own operation, in one run:
//! `cargo run --release -p vitrine-kernels --example op_speed [-- batch tokens hidden heads]`
//! (defaults: DINOv2-S/14 at 224 px, batch 1: 257 tokens, width 384, 6 heads). The last rows time a
//! forward and its backward under autodiff (training), each weighted by a fixed random gradient.
//! Everything runs on rayon's pool, as the model's passes do.

use std::time::Instant;

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};

fn time_ms<T>(iters: usize, mut f: impl FnMut() -> T) -> f64 {
    for _ in 0..3 {
        std::hint::black_box(f());
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[iters / 2]
}

fn main() {
    // On the thread pool, as the model runs its passes (`on_pool`).
    vitrine_kernels::on_pool(&Device::flex(), compare);
}

fn compare() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [batch, tokens, hidden, heads] = match args.as_slice() {
        [b, t, h, n] => [*b, *t, *h, *n],
        _ => [1, 257, 384, 6],
    };
    let device = Device::flex();
    let iters = 30;
    println!(
        "kernels: {:?}, {} threads; batch {batch}, {tokens} tokens, width {hidden}, {heads} heads; median of {iters}",
        vitrine_kernels::simd::Isa::detect(),
        rayon::current_num_threads()
    );
    println!("{:<34}{:>12}{:>12}{:>10}", "op", "flex ms", "vitrine ms", "speed-up");
    let row = |name: &str, flex: f64, ours: f64| println!("{name:<34}{flex:>12.3}{ours:>12.3}{:>9.2}x", flex / ours);

    let x = Tensor::<3>::random([batch, tokens, hidden], Distribution::Default, &device);
    for (name, d_in, d_out) in [("linear q/k/v/o (width -> width)", hidden, hidden), ("linear fc1 (width -> 4 width)", hidden, 4 * hidden)] {
        let layer = LinearConfig::new(d_in, d_out).init(&device);
        row(name, time_ms(iters, || layer.forward(x.clone())), time_ms(iters, || vitrine_kernels::linear(&layer, x.clone())));
    }
    if vitrine_kernels::int8::available() {
        let wide = Tensor::<3>::random([batch, tokens, 4 * hidden], Distribution::Default, &device);
        for (name, d_in, d_out, x) in [("int8 linear q/k/v/o (vs f32 ours)", hidden, hidden, &x), ("int8 linear fc1", hidden, 4 * hidden, &x), ("int8 linear fc2", 4 * hidden, hidden, &wide)] {
            let layer = LinearConfig::new(d_in, d_out).init(&device);
            let int8 = vitrine_kernels::quantize_linear(layer.clone());
            row(name, time_ms(iters, || vitrine_kernels::linear(&layer, x.clone())), time_ms(iters, || vitrine_kernels::linear(&int8, x.clone())));
        }
    }
    let fc1 = LinearConfig::new(hidden, 4 * hidden).init(&device);
    row(
        "linear fc1 + gelu",
        time_ms(iters, || burn::tensor::activation::gelu(fc1.forward(x.clone()))),
        time_ms(iters, || vitrine_kernels::linear_gelu(&fc1, x.clone())),
    );
    let wide = Tensor::<3>::random([batch, tokens, 4 * hidden], Distribution::Default, &device);
    let fc2 = LinearConfig::new(4 * hidden, hidden).init(&device);
    row("linear fc2 (4 width -> width)", time_ms(iters, || fc2.forward(wide.clone())), time_ms(iters, || vitrine_kernels::linear(&fc2, wide.clone())));
    row(
        "gelu (4 width)",
        time_ms(iters, || burn::tensor::activation::gelu(wide.clone())),
        time_ms(iters, || vitrine_kernels::gelu(wide.clone())),
    );
    let dim = hidden / heads;
    let split = || {
        Tensor::<3>::random([batch, tokens, hidden], Distribution::Default, &device).reshape([batch, tokens, heads, dim]).swap_dims(1, 2)
    };
    let (q, k, v) = (split(), split(), split());
    row(
        "attention",
        time_ms(iters, || burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, None, Default::default())),
        time_ms(iters, || vitrine_kernels::attention(q.clone(), k.clone(), v.clone())),
    );
    row(
        "attention probabilities",
        time_ms(iters, || burn::tensor::activation::softmax(q.clone().matmul(k.clone().swap_dims(2, 3)) / (dim as f64).sqrt(), 3)),
        time_ms(iters, || vitrine_kernels::attention_probs(q.clone(), k.clone())),
    );

    // Training: forward and backward, the input and the parameters tracked.
    let device = device.autodiff();
    let backward = |out: Tensor<3>, weights: &Tensor<3>| (out * weights.clone()).sum().backward();
    let x = Tensor::<3>::random([batch, tokens, hidden], Distribution::Default, &device).require_grad();
    let fc1 = LinearConfig::new(hidden, 4 * hidden).init(&device);
    let weights = Tensor::<3>::random([batch, tokens, 4 * hidden], Distribution::Default, &device);
    row(
        "train: linear fc1 + gelu",
        time_ms(iters, || backward(burn::tensor::activation::gelu(fc1.forward(x.clone())), &weights)),
        time_ms(iters, || backward(vitrine_kernels::linear_gelu(&fc1, x.clone()), &weights)),
    );
    let split = |x: &Tensor<3>| x.clone().reshape([batch, tokens, heads, dim]).swap_dims(1, 2);
    let merge = |o: Tensor<4>| o.swap_dims(1, 2).reshape([batch, tokens, hidden]);
    let leaf = || Tensor::<3>::random([batch, tokens, hidden], Distribution::Default, &device).require_grad();
    let (q, k, v) = (leaf(), leaf(), leaf());
    let weights = Tensor::<3>::random([batch, tokens, hidden], Distribution::Default, &device);
    row(
        "train: attention",
        time_ms(iters, || {
            let out = burn::tensor::module::attention(split(&q), split(&k), split(&v), None, None, Default::default());
            backward(merge(out), &weights)
        }),
        time_ms(iters, || backward(merge(vitrine_kernels::attention(split(&q), split(&k), split(&v))), &weights)),
    );
}
