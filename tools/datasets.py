"""Data sets for local runs, tests and uploads, in torchvision's ImageFolder layout.

- dogImages (the Udacity dog-project set: 133 breeds, 6,680 train / 835 valid / 836 test photos
  in ``train/ valid/ test/NNN.Breed_name/*.jpg``): downloaded with a progress bar, checked
  (zip integrity and the expected class and image counts), unzipped, and optionally cut down to
  a few images per class for quick runs.
- The offline fallback: scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes,
  shipped inside the scikit-learn package) written as RGB JPEGs in the same layout, so that the
  training and serving code paths are exercised on real images with no network.

Host-side only (the tools package is not in the image).
"""

from __future__ import annotations

import random
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
DOG_IMAGES_SPLITS = {"train": 6680, "valid": 835, "test": 836}
DOG_IMAGES_CLASSES = 133
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


def _progress(done: int, total: int, width: int = 40) -> None:
    if total > 0:
        frac = min(done / total, 1.0)
        bar = "#" * int(frac * width)
        sys.stderr.write(f"\r[{bar:<{width}}] {frac:6.1%} {done / 1e6:8.1f} of {total / 1e6:.1f} MB")
    else:
        sys.stderr.write(f"\r{done / 1e6:8.1f} MB")
    sys.stderr.flush()


def download(url: str, dest: Path, timeout_s: float = 30.0, chunk_bytes: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` with a progress bar on stderr; resume-safe (writes a
    ``.part`` file, renamed only when complete).

    Raises:
        DatasetError: the network or the server failed, or the body was shorter than announced.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(chunk_bytes):
                out.write(chunk)
                done += len(chunk)
                _progress(done, total)
        sys.stderr.write("\n")
    except OSError as exc:  # URLError, timeouts and HTTP errors are all OSErrors
        part.unlink(missing_ok=True)
        raise DatasetError(f"could not download {url}: {exc}") from exc
    if total and done != total:
        part.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} stopped at {done} of {total} bytes")
    part.replace(dest)
    return dest


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


def check_dog_images(root: Path) -> None:
    """Check that ``root`` holds the full dogImages set (133 classes per split and the
    published image counts).

    Raises:
        DatasetError: naming the split and what was found instead.
    """
    counts = count_images(root)
    for split, expected in DOG_IMAGES_SPLITS.items():
        found = counts.get(split)
        if found != (DOG_IMAGES_CLASSES, expected):
            raise DatasetError(
                f"{root}/{split}: expected {DOG_IMAGES_CLASSES} classes and {expected} images, "
                f"found {found or 'nothing'}; delete it and download again"
            )


def fetch_dog_images(data_dir: Path, url: str = DOG_IMAGES_URL) -> Path:
    """Make sure ``data_dir/dogImages`` holds the checked dogImages set; download and unzip it
    when it is absent (about 1.1 GB). Returns the dogImages folder.

    Raises:
        DatasetError: no network, a corrupt zip, or a set that fails ``check_dog_images``.
    """
    data_dir = Path(data_dir)
    root = data_dir / "dogImages"
    if root.is_dir():
        check_dog_images(root)
        return root
    archive = data_dir / "dogImages.zip"
    if not archive.exists():
        download(url, archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DatasetError(f"{archive}: member {bad} is corrupt; delete the file and retry")
            members = [m for m in zf.namelist() if not m.startswith("__MACOSX/")]
            zf.extractall(data_dir, members)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive} is not a zip file ({exc}); delete it and retry") from exc
    check_dog_images(root)
    return root


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
            root = fetch_dog_images(args.dest.parent)
            print(subset(root, args.dest, args.per_class) if args.per_class else root)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
