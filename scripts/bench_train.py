#!/usr/bin/env python3
"""Training throughput: vitrine (burn) against PyTorch + transformers, side by side in one run.

Times whole training steps (forward, cross-entropy, backward, AdamW update; every parameter
trained; a new 10-class head) of the same model at the same batch size and resolution, on the same
threads, and prints images/s and the ratio. Build the binary first:

    cargo build --release -p vitrine
    python3 scripts/bench_train.py --model ../shared/models/dinov2-small-imgfocus --size 112 --batch 32

Needs torch and transformers.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import AutoModelForImageClassification


def vitrine_ms(binary, model, batch, size, iters):
    cmd = [binary, "bench", "--train", "--model", model, "--batch", str(batch), "--image-size", str(size),
           "--iters", str(iters), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]["ms_per_image"]


def torch_ms(model_dir, batch, size, iters):
    model = AutoModelForImageClassification.from_pretrained(model_dir, num_labels=10, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size)
    labels = torch.arange(batch) % 10
    times = []
    for i in range(iters + 2):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) / batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/dinov2-small-imgfocus")
    parser.add_argument("--vitrine", default=os.environ.get("CARGO_TARGET_DIR", "target") + "/release/vitrine")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    print(f"training steps of {args.model} at {args.size}x{args.size}, batch {args.batch}, {threads} threads, "
          f"median of {args.iters} steps, torch {torch.__version__}")
    ours = vitrine_ms(args.vitrine, args.model, args.batch, args.size, args.iters)
    theirs = torch_ms(args.model, args.batch, args.size, args.iters)
    print(f"{'':<34} {'ms/image':>10} {'images/s':>10}")
    print(f"{'PyTorch + transformers (SDPA)':<34} {theirs:>10.2f} {1e3 / theirs:>10.1f}")
    print(f"{'vitrine (burn flex)':<34} {ours:>10.2f} {1e3 / ours:>10.1f}")
    print(f"vitrine / PyTorch time ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
