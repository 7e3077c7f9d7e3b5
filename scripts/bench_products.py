#!/usr/bin/env python3
"""A Linear layer's three products, vitrine's (the `gemm` crate, split over threads) against
PyTorch's (oneDNN/MKL), at a ViT's shapes, in one run with every core.

    cargo build --release -p vitrine-kernels --example product_speed
    python3 scripts/bench_products.py            # DINOv2-S/14 at 224 px, batch 1 and 8
    python3 scripts/bench_products.py --rows 197 --width 768   # ViT-B/16, batch 1

Prints ms and GFLOP/s per product and vitrine's time over PyTorch's.
"""
import argparse
import os
import statistics
import subprocess
import time

import torch


def median_ms(f, iters=30):
    for _ in range(3):
        f()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def torch_ms(rows, d_in, d_out):
    x, w, dy = torch.randn(rows, d_in), torch.randn(d_out, d_in), torch.randn(rows, d_out)
    return (median_ms(lambda: x @ w.t()), median_ms(lambda: dy @ w), median_ms(lambda: dy.t() @ x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[257, 8 * 257])
    parser.add_argument("--width", type=int, default=384)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vitrine/target"))
    parser.add_argument("--example", default=f"{target}/release/examples/product_speed")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    print(f"{os.cpu_count()} threads; torch {torch.__version__}; median of 30")
    print(f"{'rows':>6}{'in':>6}{'out':>6}{'product':>9}{'torch ms':>10}{'vitrine ms':>12}{'GF/s torch':>12}{'vitrine':>9}{'ratio':>8}")
    for rows in args.rows:
        out = subprocess.run([args.example, str(rows), str(args.width)], capture_output=True, text=True, check=True).stdout
        for line in out.split("\n"):
            if not line.strip():
                continue
            rows_, d_in, d_out, *ours = line.split()
            rows_, d_in, d_out = int(rows_), int(d_in), int(d_out)
            flop = 2 * rows_ * d_in * d_out / 1e9
            for name, theirs, mine in zip(["x W", "dy W^T", "x^T dy"], torch_ms(rows_, d_in, d_out), map(float, ours)):
                print(f"{rows_:>6}{d_in:>6}{d_out:>6}{name:>9}{theirs:>10.3f}{mine:>12.3f}{flop / theirs * 1e3:>12.0f}{flop / mine * 1e3:>9.0f}{mine / theirs:>7.2f}x")


if __name__ == "__main__":
    main()
