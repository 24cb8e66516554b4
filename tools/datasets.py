"""Data sets for local runs, tests and uploads, in torchvision's ImageFolder layout.

- dogImages: tools/dogimages.py fetches and checks it; ``subset`` cuts it down to a few images
  per class for quick runs (reading and counting a tree: tools/folders.py).
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

from tools import dogimages
from tools.folders import SPLITS, DatasetError, read_tree, warn

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


def check_apart(src: Path, dest: Path) -> None:
    """Refuse a ``dest`` that is ``src``, lies inside it or holds it: replacing ``dest`` would
    delete the source.

    Raises:
        DatasetError: naming both folders.
    """
    a, b = Path(src).resolve(), Path(dest).resolve()
    if a == b or b.is_relative_to(a) or a.is_relative_to(b):
        where = "is" if a == b else "is inside" if b.is_relative_to(a) else "holds"
        raise DatasetError(f"{dest} {where} the source {src}: writing it would delete the "
                           "source; choose a destination outside it")


def replace_dataset(dest: Path) -> None:
    """Delete ``dest`` before a data set is written there, if it is one already (nothing but
    split folders); anything else is left as it is.

    Raises:
        DatasetError: ``dest`` exists and holds something other than train/ valid/ test/.
    """
    dest = Path(dest)
    if not dest.exists():
        return
    if dest.is_dir():
        other = sorted(p.name for p in dest.iterdir() if not (p.is_dir() and p.name in SPLITS))
    else:
        other = [dest.name]
    if other:
        raise DatasetError(f"{dest} exists and is not a data set (it holds {', '.join(other[:3])}"
                           f"{' ...' if len(other) > 3 else ''}); choose another destination or "
                           "remove it")
    shutil.rmtree(dest)


def subset(src: Path, dest: Path, per_class: int, seed: int = 0, say=warn) -> Path:
    """Copy at most ``per_class`` photos of each class of each split from ``src`` to ``dest``
    (chosen with ``random.Random(seed)``), keeping the layout; only class folders are copied
    (``read_tree``: skipped folders are named through ``say``). An existing ``dest`` is
    replaced if it is a data set (``replace_dataset``).

    Raises:
        DatasetError: ``dest`` is ``src``, inside it or holds it (``check_apart``), or exists
            and is not a data set: the source, and anything not a data set, is never deleted.
    """
    src, dest = Path(src), Path(dest)
    check_apart(src, dest)
    tree = read_tree(src, say)
    replace_dataset(dest)
    rng = random.Random(seed)
    for split, classes in tree.items():
        for files in classes.values():
            rng.shuffle(files)
            for f in files[:per_class]:
                out = dest / split / f.relative_to(src / split)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)
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
        dest: output folder; replaced if it is a data set (``replace_dataset``).
        image_size: side of each JPEG in pixels (nearest-neighbour upscale of the 8x8 scan).
        per_class: keep at most this many images per class before the split (None: all); a
            split a class then has no image for gets no folder of it (below 6, test has none).
        splits: fractions of each class for train, valid and test.
        seed: shuffles each class with ``random.Random(seed)``.

    Returns:
        ``dest``.

    Raises:
        DatasetError: ``dest`` exists and is not a data set.
    """
    from PIL import Image
    from sklearn.datasets import load_digits  # ships its data inside the package

    digits = load_digits()
    dest = Path(dest)
    replace_dataset(dest)
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
            if not members:  # an empty class folder would be no class (train/layout.py)
                continue
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
    parser.add_argument("dest", type=Path,
                        help="where the data set goes; for dogs, the full set is fetched into "
                             "DEST's parent folder as dogImages/ and DEST is its --per-class "
                             "copy (e.g. data/dogImages-5)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="at most N photos per class and split")
    args = parser.parse_args(argv)
    try:
        if args.which == "digits":
            print(write_digits(args.dest, per_class=args.per_class))
        else:
            full = args.dest.parent / dogimages.FOLDER
            if args.per_class:
                try:  # before a 1.1 GB download
                    check_apart(full, args.dest)
                except DatasetError as exc:
                    raise DatasetError(f"{exc} (e.g. {full}-{args.per_class})") from None
            root = dogimages.ensure(args.dest.parent)
            print(subset(root, args.dest, args.per_class) if args.per_class else root)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
