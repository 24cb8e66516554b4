"""Data sets for local runs, tests and uploads, in torchvision's ImageFolder layout.

- dogImages: tools/dogimages.py fetches and checks it; ``subset`` cuts it down to a few images
  per class for quick runs.
- The offline fallback: scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes,
  shipped inside the scikit-learn package) written as RGB JPEGs in the same layout, so that the
  training and serving code paths are exercised on real images with no network.

Host-side only (the tools package is not in the image).
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# The one recipe for the digits set (write_digits, 32 px): the tests' trained model, the demo's
# offline fallback and container/local_test/train_local.sh; resnet18 from scratch, at a learning
# rate that stays stable across seeds and CPUs (benchmarks/README.md has the seeds table).
DIGITS_RECIPE = {
    "arch": "resnet18",
    "epochs": 6,
    "batch-size": 32,
    "lr": 0.02,
    "image-size": 32,
    "min-crop-scale": 0.6,
    "pretrained": False,
    "num-workers": 1,
}


class DatasetError(RuntimeError):
    """A data set could not be fetched, or is not what it should be."""


def count_images(root: Path) -> dict[str, tuple[int, int]]:
    """Return ``{split: (classes, images)}`` for each split folder present under ``root``."""
    counts = {}
    for split in SPLITS:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        classes = [d for d in split_dir.iterdir() if d.is_dir()]
        images = sum(
            1 for d in classes for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
        )
        counts[split] = (len(classes), images)
    return counts


def subset(src: Path, dest: Path, per_class: int, seed: int = 0) -> Path:
    """Copy at most ``per_class`` images of each class of each split from ``src`` to ``dest``
    (chosen with ``random.Random(seed)``), keeping the layout. An existing ``dest`` is replaced.
    """
    src, dest = Path(src), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    rng = random.Random(seed)
    for split in SPLITS:
        if not (src / split).is_dir():
            continue
        for class_dir in sorted(d for d in (src / split).iterdir() if d.is_dir()):
            files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            rng.shuffle(files)
            out = dest / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files[:per_class]:
                shutil.copy2(f, out / f.name)
    return dest


def write_digits(
    dest: Path,
    image_size: int = 32,
    per_class: int | None = None,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Path:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 grey scans, classes 0 to 9) as
    RGB JPEGs of ``image_size`` x ``image_size`` pixels in ImageFolder layout under ``dest``:
    ``train/ valid/ test/NNN.digit_D/*.jpg`` (class folders numbered like dogImages').

    Args:
        dest: output folder; replaced if it exists.
        image_size: side of each JPEG in pixels (nearest-neighbour upscale of the 8x8 scan).
        per_class: keep at most this many images per class before the split (None: all).
        splits: fractions of each class for train, valid and test.
        seed: shuffles each class with ``random.Random(seed)``.

    Returns:
        ``dest``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits  # ships its data inside the package

    digits = load_digits()
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    rng = random.Random(seed)
    for label in range(10):
        idx = [i for i, t in enumerate(digits.target) if t == label]
        rng.shuffle(idx)
        if per_class is not None:
            idx = idx[:per_class]
        n_train = max(1, round(len(idx) * splits[0]))
        n_valid = max(1, round(len(idx) * splits[1]))
        parts = {
            "train": idx[:n_train],
            "valid": idx[n_train : n_train + n_valid],
            "test": idx[n_train + n_valid :],
        }
        for split, members in parts.items():
            out = dest / split / f"{label + 1:03d}.digit_{label}"
            out.mkdir(parents=True, exist_ok=True)
            for i in members:
                grey = (255 - digits.images[i] * 255 / 16).clip(0, 255).astype("uint8")
                img = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.NEAREST)
                img.convert("RGB").save(out / f"digit_{i:04d}.jpg", quality=95)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.datasets {dogs,digits} DEST [--per-class N]``: make a local data set."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("which", choices=["dogs", "digits"])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--per-class", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.which == "digits":
            print(write_digits(args.dest, per_class=args.per_class))
        else:
            from tools import dogimages

            root = dogimages.ensure(args.dest.parent)
            print(subset(root, args.dest, args.per_class) if args.per_class else root)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
