#!/usr/bin/env python3
"""Lays out a smaller ImageFolder (train/ and val/ of <class>/<image>) as symlinks into a bigger one.

The fine-tuning comparisons in docs/training.md run on such subsets, so that vitrine and the
transformers baseline (scripts/hf_baseline.py) see exactly the same images:

    python3 scripts/subset.py ../shared/data/imagenette /tmp/two --classes church,golf_ball --train 40 --val 50
    python3 scripts/subset.py ../shared/data/imagenette /tmp/in1k --train 100 --val 50

Images are taken in sorted file-name order, so the same command gives the same subset everywhere.
"""

import argparse
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="ImageFolder root with train/ and val/")
    parser.add_argument("out", type=Path, help="new folder (must not exist)")
    parser.add_argument("--classes", help="comma-separated class folders (default: all)")
    parser.add_argument("--train", type=int, required=True, help="training images per class")
    parser.add_argument("--val", type=int, required=True, help="validation images per class")
    args = parser.parse_args()

    if args.out.exists():
        sys.exit(f"{args.out} already exists")
    classes = args.classes.split(",") if args.classes else sorted(p.name for p in (args.source / "train").iterdir() if p.is_dir())
    for split, count in (("train", args.train), ("val", args.val)):
        for name in classes:
            images = sorted(p for p in (args.source / split / name).iterdir() if p.is_file())
            if len(images) < count:
                sys.exit(f"{args.source / split / name} has {len(images)} images, fewer than {count}")
            folder = args.out / split / name
            folder.mkdir(parents=True)
            for image in images[:count]:
                os.symlink(image.resolve(), folder / image.name)
    print(f"{args.out}: {len(classes)} classes, {args.train} train and {args.val} val images each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
