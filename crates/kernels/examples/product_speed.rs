//! Times a Linear layer's three products (forward `x W`, backward `dy W^T` and `x^T dy`) at a ViT's
//! shapes, on rayon's pool as the model runs them; `scripts/bench_products.py` runs it beside
//! PyTorch's. `cargo run --release -p vitrine-kernels --example product_speed [-- rows width...]`
//! (defaults: DINOv2-S/14 at 224 px, batch 1 and 8). One line per shape, in ms, median of 30:
//! `rows d_in d_out forward dx dw`.

use std::time::Instant;

use vitrine_kernels::linear::{Matrix, product};

fn median_ms(mut f: impl FnMut()) -> f64 {
    // Warm up for a fixed time: the first products of a process also wake threads and fault pages in.
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < 0.3 {
        f();
    }
    let mut times: Vec<f64> = (0..30)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[15]
}

fn dense(data: &[f32], cols: usize) -> Matrix<'_> {
    Matrix { data, offset: 0, rows: cols as isize, cols: 1 }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (rows, widths) = match args.split_first() {
        Some((rows, widths)) if !widths.is_empty() => (vec![*rows], widths.to_vec()),
        _ => (vec![257, 8 * 257], vec![384]),
    };
    vitrine_kernels::on_pool(&burn::tensor::Device::flex(), || {
        for &rows in &rows {
            for &width in &widths {
                for (d_in, d_out) in [(width, width), (width, 4 * width), (4 * width, width)] {
                    let (x, w, dy) = (vec![0.5f32; rows * d_in], vec![0.25f32; d_in * d_out], vec![0.1f32; rows * d_out]);
                    let forward = median_ms(|| drop(std::hint::black_box(product(dense(&x, d_in), dense(&w, d_out), rows, d_in, d_out))));
                    let dx = median_ms(|| drop(std::hint::black_box(product(dense(&dy, d_out), dense(&w, d_out).t(), rows, d_out, d_in))));
                    let dw = median_ms(|| drop(std::hint::black_box(product(dense(&x, d_in).t(), dense(&dy, d_out), d_in, rows, d_out))));
                    println!("{rows} {d_in} {d_out} {forward:.4} {dx:.4} {dw:.4}");
                }
            }
        }
    });
}
