#!/usr/bin/env python3
"""The CPU engine against PyTorch, side by side in one run: inference and one training step.

For each model (ViT-B/16 and a DeiT-Ti-shaped ViT with random weights, and the real DINOv2-S/14
when ../shared has it), each batch size, and each mode, it times PyTorch + transformers (SDPA and
eager attention) and `vitrine bench` on the same shapes and the same threads (all cores), and
prints ms per image, the ratio to PyTorch's faster attention, and the achieved GFLOP/s. A training
step is forward, cross-entropy on a new 10-class head, backward and AdamW, every parameter trained.
Build the binary first:

    cargo build --release -p vitrine
    python3 scripts/bench_cpu.py                     # every row; about 15 minutes on 2 cores
    python3 scripts/bench_cpu.py --models dinov2-s --modes infer --batches 1
    python3 scripts/bench_cpu.py --models dinov2-s --modes train --size 112 --batches 32

Needs torch and transformers (`pip install torch transformers`).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, ViTConfig, ViTModel

SHARED_DINOV2 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "dinov2-small-imgfocus")


def random_vit(folder, hidden, layers, heads, mlp, size):
    """A ViT with random weights in Hugging Face layout (timing needs no trained weights)."""
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=mlp, image_size=size, patch_size=16)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def forward_gflop(config, size):
    """Multiply-adds of one forward pass of one image, times two (LayerNorm, softmax left out)."""
    patch = config.patch_size
    tokens = (size // patch) ** 2 + 1
    d, layers = config.hidden_size, config.num_hidden_layers
    m = getattr(config, "intermediate_size", None) or int(d * config.mlp_ratio)  # DINOv2 gives a ratio
    per_layer = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
    embed = (tokens - 1) * 3 * patch * patch * d
    return 2 * (layers * per_layer + embed) / 1e9


def torch_ms(folder, attn, batch, size, iters, train):
    if train:
        model = AutoModelForImageClassification.from_pretrained(folder, num_labels=10, attn_implementation=attn)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05)
        labels = torch.arange(batch) % 10
    else:
        model = AutoModel.from_pretrained(folder, attn_implementation=attn).eval()
    x = torch.randn(batch, 3, size, size)

    def step():
        if train:
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(pixel_values=x)

    for _ in range(2):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times) / batch


def vitrine_ms(binary, folder, batch, size, iters, train):
    cmd = [binary, "bench", "--model", folder, "--batch", str(batch), "--image-size", str(size),
           "--iters", str(iters), "--json"] + (["--train"] if train else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    row = json.loads(out.stdout)[0]
    return row["ms_per_image"], row.get("isa", "?")


def cpu_description():
    model, flags = platform.processor(), set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    simd = [f for f in ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile"] if f in flags]
    return model, simd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vitrine", default=os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vitrine/target")) + "/release/vitrine")
    parser.add_argument("--models", nargs="+", default=["vit-b16", "dinov2-s", "deit-ti"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=10, help="timed runs per row (training: a third of them)")
    args = parser.parse_args()

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" report
    transformers.utils.logging.disable_progress_bar()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    cpu, simd = cpu_description()
    print(f"CPU: {cpu}; {threads} threads; SIMD: {' '.join(simd)}; torch {torch.__version__}; "
          f"{args.size}x{args.size}; median of {args.iters} runs (training: {max(args.iters // 3, 2)})")
    print(f"{'model':<10}{'mode':<7}{'batch':>6}{'engine':>18}{'ms/image':>11}{'vs PyTorch':>12}{'GFLOP/s':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        folders = {
            "vit-b16": lambda: random_vit(os.path.join(scratch, "vit-b16"), 768, 12, 12, 3072, args.size),
            "deit-ti": lambda: random_vit(os.path.join(scratch, "deit-ti"), 192, 12, 3, 768, args.size),
            "dinov2-s": lambda: SHARED_DINOV2 if os.path.isdir(SHARED_DINOV2) else None,
        }
        for name in args.models:
            folder = folders[name]()
            if folder is None:
                print(f"{name:<10}skipped: {SHARED_DINOV2} not found")
                continue
            gflop = forward_gflop(AutoConfig.from_pretrained(folder), args.size)
            for mode in args.modes:
                train = mode == "train"
                iters = max(args.iters // 3, 2) if train else args.iters
                work = gflop * (3 if train else 1)  # backward costs about twice the forward
                for batch in args.batches:
                    rows = [(f"pytorch {attn}", torch_ms(folder, attn, batch, args.size, iters, train)) for attn in ["sdpa", "eager"]]
                    reference = min(ms for _, ms in rows)
                    ms, isa = vitrine_ms(args.vitrine, folder, batch, args.size, iters, train)
                    rows.append((f"vitrine ({isa})", ms))
                    for engine, ms in rows:
                        print(f"{name:<10}{mode:<7}{batch:>6}{engine:>18}{ms:>11.1f}{ms / reference:>11.2f}x{work / ms * 1e3:>10.1f}",
                              flush=True)


if __name__ == "__main__":
    main()
