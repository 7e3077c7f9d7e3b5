#!/usr/bin/env python3
"""The models of the browser benchmark (tests/e2e/peer-bench.mjs), for both engines: a vitrine
bundle (Hugging Face layout) and the same model exported to ONNX (torch.onnx), for onnxruntime-web.

    python3 scripts/export_onnx.py [--out DIR]     # default: ~/.cache/vitrine/peer-bench

Writes DIR/<name>/ with config.json, model.safetensors and model.onnx, for
- dinov2-s14: ../shared/models/dinov2-small-imgfocus (a DINOv2-S/14 backbone), at 224 px;
- vit-b16: a ViT-B/16 classifier (1,000 classes) at 224 px with random weights (seed 0): timing only;
and DIR/<name>-int8/, the same model in each engine's own int8: the bundle `vitrine quantize
--scheme int8` writes (the binary from `cargo build --release -p vitrine`), and onnxruntime's
`quantize_dynamic` of model.onnx (int8 weights per channel, activations quantized at run time).

Each ONNX file is checked against transformers in PyTorch on one random input through onnxruntime
(CPU): the output must agree within 1e-4 of the output's largest magnitude, or the script fails.
The benchmark checks vitrine against onnxruntime-web in the browser the same way.

Needs: pip install torch transformers onnx onnxscript onnxruntime
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DINOV2 = ROOT.parent / "shared/models/dinov2-small-imgfocus"
SIZE = 224
TOLERANCE = 1e-4  # of the largest output magnitude
VITRINE = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/vitrine/target")) / "release/vitrine"


def dinov2_small():
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(SHARED_DINOV2), "last_hidden_state"


def vit_base_random():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=SIZE, patch_size=16, num_labels=1000)
    return ViTForImageClassification(config), "logits"


MODELS = {"dinov2-s14": dinov2_small, "vit-b16": vit_base_random}


class Bare(torch.nn.Module):
    """The one output the benchmark compares (logits, or the backbone's last hidden state)."""

    def __init__(self, model, output):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, pixel_values):
        return getattr(self.model(pixel_values=pixel_values), self.output)


def export(name, out_dir):
    import onnxruntime

    model, output = MODELS[name]()
    model.eval()
    folder = out_dir / name
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    pixels = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    onnx_path = folder / "model.onnx"
    with torch.no_grad():
        program = torch.onnx.export(Bare(model, output), (pixels,), dynamo=True, input_names=["pixel_values"], output_names=[output])
        program.save(str(onnx_path), external_data=False)
        expected = Bare(model, output)(pixels).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": pixels.numpy()})
    scale = float(np.abs(expected).max())
    diff = float(np.abs(got - expected).max())
    print(f"{name}: onnxruntime vs transformers: max |diff| {diff:.2e} of max |value| {scale:.2f}", file=sys.stderr)
    if diff > TOLERANCE * scale:
        sys.exit(f"{name}: the ONNX export disagrees with transformers ({diff:.2e} > {TOLERANCE} x {scale:.2f})")
    export_int8(folder, out_dir / f"{name}-int8")


def export_int8(folder, int8):
    """`folder` in each engine's own int8: vitrine's int8 bundle, onnxruntime's quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not VITRINE.exists():
        sys.exit(f"{VITRINE} is missing: cargo build --release -p vitrine")
    if int8.exists():
        shutil.rmtree(int8)
    subprocess.run([str(VITRINE), "quantize", "--model", str(folder), "--out", str(int8), "--scheme", "int8"], check=True)
    quantize_dynamic(str(folder / "model.onnx"), str(int8 / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/vitrine/peer-bench")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    args = parser.parse_args()
    for name in args.models.split(","):
        export(name, args.out)


if __name__ == "__main__":
    main()
