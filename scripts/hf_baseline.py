#!/usr/bin/env python3
"""Fine-tunes a checkpoint with transformers' Trainer and its documented defaults, then the same
with `vitrine train` and its defaults, on the same ImageFolder, and prints both validation top-1s.

    pip install torch transformers accelerate pillow
    cargo build --release -p vitrine
    python3 scripts/hf_baseline.py DATA --image-size 112 --epochs 6 [--seeds 0 1 2 3 4]

DATA holds train/ and val/ of <class>/<image> (scripts/subset.py lays out the subsets that
docs/training.md compares on). Both sides see the same images at the same resolution for the same
epochs and batch size, and are evaluated on the same val images with the same resize and centre crop.

The baseline is what a transformers user gets by default: `Trainer` with AdamW, lr 5e-5, linear
decay, no warmup and no weight decay, a new linear head (`*ForImageClassification`), and the
augmentation of transformers' image-classification example (RandomResizedCrop, horizontal flip).
Only the number of epochs and the batch size are set, to match vitrine's run.

With several seeds, each seed runs both sides (the seed sets the head's initialisation, the
augmentation and the batch order on each side), and the table ends with each side's mean and
standard deviation: on a small validation set one seed says little.
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

NAMES = {"hf": "transformers Trainer (defaults)", "vitrine": "vitrine train (defaults)"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}


def image_folder(split: Path, classes: list[str]) -> list[tuple[Path, int]]:
    return [(p, i) for i, c in enumerate(classes) for p in sorted((split / c).iterdir()) if p.suffix in IMAGE_SUFFIXES]


def random_resized_crop(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3), which the example uses."""
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return image.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    side = min(w, h)
    return image.resize((size, size), Image.BICUBIC, box=((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))


def centre_crop(image: Image.Image, size: int, resize_to: int) -> Image.Image:
    """Resize the shortest edge to `resize_to`, then crop the centre `size` square (vitrine's eval geometry)."""
    w, h = image.size
    scale = resize_to / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    x, y = (w - size) // 2, (h - size) // 2
    return image.crop((x, y, x + size, y + size))


class Images(torch.utils.data.Dataset):
    def __init__(self, samples, size, resize_to, mean, std, train, seed):
        self.samples, self.size, self.resize_to, self.train = samples, size, resize_to, train
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        image = Image.open(path).convert("RGB")
        if self.train:
            image = random_resized_crop(image, self.size, self.rng)
            if self.rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = centre_crop(image, self.size, self.resize_to)
        pixels = (np.asarray(image, np.float32) / 255.0 - self.mean) / self.std
        return {"pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1).copy()), "labels": label}


def top1(model, dataset, batch_size: int) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            logits = model(pixel_values=torch.stack([it["pixel_values"] for it in items])).logits
            right += sum(int(p == it["labels"]) for p, it in zip(logits.argmax(-1).tolist(), items))
    return right / len(dataset)


def preprocessing(model: str, model_type: str) -> tuple[int, int, list[float], list[float]]:
    """Crop side, shortest edge, mean and std: the checkpoint's processor, else its family's default
    (what vitrine falls back to for a checkpoint without preprocessor_config.json)."""
    try:
        processor = AutoImageProcessor.from_pretrained(model)
    except OSError:
        if model_type == "dinov2":
            return 224, 256, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        return 224, 224, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    crop = processor.crop_size["height"] if getattr(processor, "crop_size", None) else processor.size.get("height", 224)
    return crop, processor.size.get("shortest_edge", crop), processor.image_mean, processor.image_std


def hf_run(args, classes, train, val) -> tuple[float, float]:
    config = AutoConfig.from_pretrained(
        args.model, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)}
    )
    model = AutoModelForImageClassification.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)
    # The model's own resize-to-crop ratio at the run's side (256/224 for DINOv2), as vitrine's preprocessing.
    crop, shortest, mean, std = preprocessing(args.model, config.model_type)
    resize_to = round(shortest * args.image_size / crop)
    train_set = Images(train, args.image_size, resize_to, mean, std, True, args.seed)
    val_set = Images(val, args.image_size, resize_to, mean, std, False, args.seed)
    training = TrainingArguments(
        output_dir=str(args.out / "hf"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        seed=args.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, len(train) // args.batch_size),
        dataloader_num_workers=0,
        use_cpu=True,
    )
    started = time.time()
    Trainer(model=model, args=training, train_dataset=train_set).train()
    return top1(model, val_set, 64), time.time() - started


def vitrine_run(args) -> tuple[float, float]:
    run = args.out / "vitrine"
    command = [
        args.vitrine, "train", "--model", args.model, "--data", str(args.data), "--out", str(run),
        "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--seed", str(args.seed),
    ]
    started = time.time()
    subprocess.run(command, check=True)
    seconds = time.time() - started
    evaluation = subprocess.run(
        [args.vitrine, "eval", "--model", str(run / "best"), "--data", str(args.data), "--split", "val", "--json"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(evaluation.stdout)["top1"], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="ImageFolder root with train/ and val/")
    parser.add_argument("--model", default="../shared/models/dinov2-small-imgfocus", help="Hugging Face model folder")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed on each side")
    parser.add_argument("--out", type=Path, default=Path("runs/baseline"), help="run folders (replaced)")
    parser.add_argument("--vitrine", default=os.environ.get("VITRINE", str(Path(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/vitrine/target"))) / "release/vitrine")))
    parser.add_argument("--only", choices=["hf", "vitrine"], help="run one side only")
    args = parser.parse_args()

    classes = sorted(p.name for p in (args.data / "train").iterdir() if p.is_dir())
    train, val = image_folder(args.data / "train", classes), image_folder(args.data / "val", classes)
    print(f"{args.data}: {len(classes)} classes, {len(train)} train / {len(val)} val images, {args.image_size} px, "
          f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads", flush=True)
    if args.out.exists():
        subprocess.run(["rm", "-rf", str(args.out)], check=True)
    sides = [side for side in ("hf", "vitrine") if args.only in (None, side)]
    results = {side: [] for side in sides}
    for seed in args.seeds:
        run = argparse.Namespace(**{**vars(args), "seed": seed, "out": args.out / f"seed{seed}"})
        run.out.mkdir(parents=True)
        torch.manual_seed(seed)
        for side in sides:
            accuracy, seconds = hf_run(run, classes, train, val) if side == "hf" else vitrine_run(run)
            results[side].append((seed, accuracy, seconds))
            print(f"seed {seed}: {NAMES[side]}: {100 * accuracy:.2f} % ({seconds:.0f} s)", flush=True)
    print("\n| engine | seed | val top-1 | seconds |\n|---|---:|---:|---:|")
    for side in sides:
        for seed, accuracy, seconds in results[side]:
            print(f"| {NAMES[side]} | {seed} | {100 * accuracy:.2f} % | {seconds:.0f} |")
    if len(args.seeds) > 1:
        print("\n| engine | seeds | mean val top-1 | standard deviation |\n|---|---:|---:|---:|")
        for side in sides:
            accuracies = [100 * accuracy for _, accuracy, _ in results[side]]
            print(f"| {NAMES[side]} | {len(accuracies)} | {statistics.mean(accuracies):.2f} % | {statistics.stdev(accuracies):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
