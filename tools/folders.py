"""Data sets on disk in torchvision's ImageFolder layout (``train/ valid/ test/NNN.Class/*.jpg``):
reading and counting them as the training job does, and the tools' error and warnings.

Host-side only (the tools package is not in the image).
"""

from __future__ import annotations

import sys
from pathlib import Path

from train import layout  # the training job's rule for class folders (standard library only)

SPLITS = ("train", "valid", "test")


class DatasetError(RuntimeError):
    """A data set could not be fetched, or is not what it should be."""


def warn(message: str) -> None:
    """The tools' warnings: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def read_tree(root: Path, say=warn) -> dict[str, dict[str, list[Path]]]:
    """The data set under ``root``: ``{split: {class folder name: [photo paths, sorted]}}`` for
    each split folder present. Class folders and photos follow train/layout.py, the training
    job's own rule: hidden folders, ``__MACOSX`` and folders without photos are skipped, and
    each split's skipped folders are named in one ``say`` line (stderr by default).

    Raises:
        OSError: a folder cannot be listed.
    """
    tree = {}
    for split in SPLITS:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        found = layout.class_folders(split_dir)
        if found.skipped:
            say(found.warning())
        tree[split] = {c: layout.photos(split_dir / c) for c in found.classes}
    return tree


def count_images(root: Path, say=warn) -> dict[str, tuple[int, int]]:
    """Return ``{split: (classes, images)}`` for each split folder present under ``root``, as
    the training job counts them (``read_tree``)."""
    return {split: (len(classes), sum(map(len, classes.values())))
            for split, classes in read_tree(root, say).items()}
