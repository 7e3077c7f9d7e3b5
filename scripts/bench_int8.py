#!/usr/bin/env python3
"""int8 against f32 on the same bundle, vitrine beside onnxruntime, in one run (natively, CPU).

For an int8 vitrine bundle (default: the shipped www/models/default), it times, at each batch size
and with every core:
- vitrine's int8 products and its f32 products on the same int8 weights (`vitrine bench`, the
  second with VITRINE_NO_INT8=1);
- onnxruntime on the same model exported to ONNX with those weights dequantized (f32), and on that
  ONNX file after onnxruntime's own `quantize_dynamic` (int8 weights per channel, activations
  quantized at run time).
It prints ms per image, each engine's int8 speed-up, and vitrine int8 against onnxruntime int8.
The ONNX model is checked against transformers in PyTorch first (1e-4 of the largest logit).
Build the binary first:

    cargo build --release -p vitrine
    python3 scripts/bench_int8.py [--model BUNDLE] [--batches 1 8] [--iters 20]

Needs: pip install torch transformers onnx onnxscript onnxruntime safetensors
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/vitrine/target"))


def f32_bundle(bundle, out):
    """The bundle with its int8 weights dequantized (`q * scale` per output row), as transformers reads it."""
    tensors = load_file(str(bundle / "model.safetensors"))
    weights = {}
    for name, value in tensors.items():
        if name.endswith("_scale"):
            continue
        scale = tensors.get(name + "_scale")
        weights[name] = (value.astype(np.float32) * scale[:, None]) if scale is not None else value.astype(np.float32)
    config = json.loads((bundle / "config.json").read_text())
    config.pop("quantization", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file(weights, str(out / "model.safetensors"))
    return config


def export_onnx(folder, side, path):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    x = torch.randn(1, 3, side, side)
    torch.onnx.export(model, (x,), str(path), input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    import onnxruntime as ort

    with torch.no_grad():
        want = model(pixel_values=x).logits.numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x.numpy()})[0]
    gap = float(np.abs(got - want).max() / np.abs(want).max())
    if gap > 1e-4:
        raise SystemExit(f"the ONNX export differs from transformers by {gap:.2e} of the largest logit")


def time_ort(path, batch, side, iters, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"pixel_values": x})
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, {"pixel_values": x})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / batch


def time_vitrine(bundle, batch, side, iters, f32):
    env = dict(os.environ, **({"VITRINE_NO_INT8": "1"} if f32 else {}))
    out = subprocess.run([str(TARGET / "release/vitrine"), "bench", "--model", str(bundle), "--batch", str(batch),
                          "--image-size", str(side), "--iters", str(iters), "--json"], env=env, check=True, capture_output=True, text=True)
    row = json.loads(out.stdout)[0]
    return row["ms_per_image"], row["int8_isa"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "www/models/default")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    threads = os.cpu_count()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = f32_bundle(args.model, tmp / "f32")
        side = config["image_size"]
        export_onnx(tmp / "f32", side, tmp / "model.onnx")
        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
        print(f"{args.model} at {side} px; {cpu}, {threads} threads; median of {args.iters} passes, ms per image")
        print(f"{'batch':>5} {'vitrine f32':>12} {'vitrine int8':>13} {'speed-up':>9} {'ort f32':>9} {'ort int8':>9} {'speed-up':>9} {'vitrine/ort int8':>17}")
        for batch in args.batches:
            v32, _ = time_vitrine(args.model, batch, side, args.iters, f32=True)
            v8, isa = time_vitrine(args.model, batch, side, args.iters, f32=False)
            o32 = time_ort(tmp / "model.onnx", batch, side, args.iters, threads)
            o8 = time_ort(tmp / "model.int8.onnx", batch, side, args.iters, threads)
            print(f"{batch:>5} {v32:>12.2f} {v8:>13.2f} {v32 / v8:>8.2f}x {o32:>9.2f} {o8:>9.2f} {o32 / o8:>8.2f}x {v8 / o8:>16.2f}x")
        print(f"(vitrine's int8 products: {isa}; a ratio below 1 in the last column: vitrine is faster)")


if __name__ == "__main__":
    main()
