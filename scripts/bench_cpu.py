#!/usr/bin/env python3
"""CPU inference latency: vitrine's burn backends against PyTorch + transformers, in one run.

Runs `vitrine bench` (burn `flex`, and `ndarray` when the binary has it) and the same model in
PyTorch (transformers, eager attention and SDPA) on the same input size, batch and thread count,
then prints ms per image and the ratio to PyTorch. Build the binary first:

    cargo build --release -p vitrine --features ndarray
    python3 scripts/bench_cpu.py --model ../shared/models/dinov2-small-imgfocus

Needs torch and transformers (`pip install torch transformers`).
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import AutoModel


def vitrine_ms(binary, model, device, batch, size, iters):
    cmd = [binary, "bench", "--model", model, "--device", device, "--batch", str(batch),
           "--image-size", str(size), "--iters", str(iters), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1]
    return json.loads(out.stdout)[0]["ms_per_image"], None


def torch_ms(model_dir, attn, batch, size, iters):
    model = AutoModel.from_pretrained(model_dir, attn_implementation=attn).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        for _ in range(2):
            model(pixel_values=x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(pixel_values=x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) / batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/dinov2-small-imgfocus")
    parser.add_argument("--vitrine", default=os.environ.get("CARGO_TARGET_DIR", "target") + "/release/vitrine")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    print(f"{args.model} at {args.size}x{args.size}, {threads} threads, median of {args.iters} runs, "
          f"torch {torch.__version__}")
    print(f"{'engine':<28}{'batch':>6}{'ms/image':>12}{'vs PyTorch SDPA':>18}")
    for batch in args.batches:
        reference = torch_ms(args.model, "sdpa", batch, args.size, args.iters)
        rows = [("pytorch (sdpa)", reference), ("pytorch (eager)", torch_ms(args.model, "eager", batch, args.size, args.iters))]
        for device in ["cpu", "ndarray"]:
            ms, error = vitrine_ms(args.vitrine, args.model, device, batch, args.size, args.iters)
            name = "vitrine flex (--device cpu)" if device == "cpu" else "vitrine ndarray"
            if ms is None:
                print(f"{name:<28}{batch:>6}  skipped: {error}")
            else:
                rows.append((name, ms))
        for name, ms in rows:
            print(f"{name:<28}{batch:>6}{ms:>12.1f}{ms / reference:>17.2f}x")


if __name__ == "__main__":
    main()
