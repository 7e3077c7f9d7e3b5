#!/usr/bin/env python3
"""Checks that a bundle written by `vitrine export` (or `vitrine train`'s best/) loads in transformers
and predicts what vitrine predicts.

    python3 scripts/check_export.py BUNDLE IMAGE [IMAGE ...]

Loads BUNDLE with AutoModelForImageClassification and AutoImageProcessor (PIL backend), classifies
the images, runs `vitrine predict --json` on the same files and compares the probabilities of every
class (at most 5e-3 apart: the resampling difference between Pillow and fast_image_resize, 2e-3 at
224 px in the parity tests, reaches 3.8e-3 at 112 px on tench.jpg) and the top-1 labels.
Exits non-zero on a mismatch. Needs torch, transformers and pillow.
"""

import json
import os
import subprocess
import sys

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

TOLERANCE = 5e-3


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bundle, images = sys.argv[1], sys.argv[2:]
    binary = os.environ.get("VITRINE", os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vitrine/target")) + "/release/vitrine")
    model = AutoModelForImageClassification.from_pretrained(bundle).eval()
    processor = AutoImageProcessor.from_pretrained(bundle, backend="pil")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    out = subprocess.run([binary, "predict", "--model", bundle, "--json", "--top-k", str(len(labels)), *images],
                         capture_output=True, text=True, check=True)
    ours = json.loads(out.stdout)
    worst = 0.0
    for path, prediction in zip(images, ours):
        inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            probs = model(**inputs).logits.softmax(-1)[0]
        theirs = {labels[i]: float(p) for i, p in enumerate(probs)}
        mine = {c["label"]: c["prob"] for c in prediction["top"]}
        diff = max(abs(theirs[k] - mine[k]) for k in labels)
        worst = max(worst, diff)
        top_theirs, top_mine = max(theirs, key=theirs.get), prediction["top"][0]["label"]
        print(f"{os.path.basename(path):<32} transformers {top_theirs:<20} vitrine {top_mine:<20} max |dp| {diff:.2e}")
        if top_theirs != top_mine:
            sys.exit(f"top-1 differs on {path}")
    if worst > TOLERANCE:
        sys.exit(f"probabilities differ by {worst:.2e} > {TOLERANCE}")
    print(f"ok: {len(images)} images, max |dp| {worst:.2e} <= {TOLERANCE}")


if __name__ == "__main__":
    main()
