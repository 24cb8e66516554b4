"""The ImageFolder layout's one rule: which files are photos and which folders are classes.

Training (train/data.py) and the host tools (tools/datasets.py: counts, subsets and uploads) both
read it, so a folder the tools count is a class the job trains on, and one the job would skip the
tools skip too. Standard library only: tools/ and deploy.py import it without torch.

A class folder is a folder of a channel (or split) that is not hidden (``.cache``), is not
macOS's archive metadata (``__MACOSX``, which holds ``._*.jpg`` files that are not photos) and
holds at least one photo, at any depth (torchvision's DatasetFolder reads class folders
recursively). Anything else is skipped and named in one warning line per channel, never a class
without photos.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# torchvision.datasets.folder.IMG_EXTENSIONS, copied so that this module needs no torch
# (tests/train/test_data.py checks that the two stay equal).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MACOS_METADATA = "__MACOSX"


def readable_label(folder: str) -> str:
    """A class folder's label, as the manifest lists it: "001.Affenpinscher" -> "Affenpinscher";
    "017.Bull_terrier" -> "Bull terrier"."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ")


def is_photo(path: str | os.PathLike) -> bool:
    """A file the job reads as a photo: an image extension (any case) and not hidden (macOS's
    ``._name.jpg`` companions are metadata, not JPEGs)."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_photos(folder: Path):
    for top, _, files in os.walk(folder, followlinks=True):
        yield from (Path(top) / f for f in files if is_photo(f))


def photos(folder: Path) -> list[Path]:
    """The photos under ``folder`` at any depth (as torchvision's DatasetFolder walks a class
    folder), sorted."""
    return sorted(_walk_photos(folder))


@dataclass
class ClassFolders:
    """The class folders of one channel: ``classes`` (folder names, sorted) and ``skipped``
    (folder name -> why it is not a class)."""

    root: Path
    classes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def describe(self, limit: int = 10) -> str:
        """The skipped folders and why, e.g. ``__MACOSX (macOS archive metadata), 005.Empty (no
        photos)``: at most ``limit`` names, then how many more."""
        names = [f"{name} ({why})" for name, why in sorted(self.skipped.items())]
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(names[:limit]) + more

    def warning(self) -> str | None:
        """One line naming the skipped folders and why; None when none was skipped."""
        if not self.skipped:
            return None
        n = len(self.skipped)
        folders = "1 folder that is" if n == 1 else f"{n} folders that are"
        return f"{self.root}: skipping {folders} not a class: {self.describe()}"


def class_folders(root: Path) -> ClassFolders:
    """Sort the folders directly under ``root`` (a channel or split) into classes and skipped.

    Raises:
        OSError: ``root`` cannot be listed.
    """
    root = Path(root)
    found = ClassFolders(root)
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name == MACOS_METADATA:
            found.skipped[d.name] = "macOS archive metadata"
        elif d.name.startswith("."):
            found.skipped[d.name] = "hidden"
        elif next(_walk_photos(d), None) is None:
            found.skipped[d.name] = "no photos"
        else:
            found.classes.append(d.name)
    return found
