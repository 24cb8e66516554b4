"""dogImages, the Udacity dog-project set: 133 breeds, 6,680 train / 835 valid / 836 test photos
in ``train/ valid/ test/NNN.Breed_name/*.jpg``, as one zip of about 1.1 GB.

``ensure(data_dir)`` leaves a checked ``data_dir/dogImages`` or raises one line saying what to
do. The archive comes from ``DOG_IMAGES_URL`` (an http(s) URL, an s3:// URI or a file path; the
Udacity URL by default) into ``data_dir/dogImages.zip``, its download resumable
(tools/fetch.py). It is checked before anything is written (a zip, every member's CRC, no
member name that would land outside the folder), extracted into a temporary folder beside the
final one, counted (133 classes, the published image counts per split) and only then renamed to
``dogImages``: an interrupted or failed extraction never leaves a tree a later run would trust.
Host-side only (the tools package is not in the image).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from tools.folders import DatasetError, count_images
from tools.fetch import FetchError, Unreachable, fetch, is_local

DEFAULT_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
SPLITS = {"train": 6680, "valid": 835, "test": 836}
CLASSES = 133
FOLDER = "dogImages"
ARCHIVE = "dogImages.zip"


class DogImagesUnavailable(DatasetError):
    """The archive's source cannot be reached (no network): the demo falls back to digits."""


def source() -> str:
    """Where the archive comes from: ``DOG_IMAGES_URL``, else the Udacity URL."""
    return os.environ.get("DOG_IMAGES_URL") or DEFAULT_URL


def check(root: Path) -> None:
    """Check that ``root`` holds the whole set: 133 classes per split, the published counts.

    Raises:
        DatasetError: naming the split and what was found instead.
    """
    counts = count_images(root)
    for split, expected in SPLITS.items():
        found = counts.get(split)
        if found != (CLASSES, expected):
            raise DatasetError(
                f"{root}/{split}: expected {CLASSES} classes and {expected} images, found "
                f"{'nothing' if found is None else f'{found[0]} classes and {found[1]} images'}"
            )


def _members(archive: Path) -> list[zipfile.ZipInfo]:
    """The archive's members to extract (``__MACOSX/`` left out), checked.

    Raises:
        DatasetError: not a zip, a corrupt member, or a member name outside the folder.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DatasetError(f"{archive}: member {bad} is corrupt")
            members = []
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if name.parts and name.parts[0] == "__MACOSX":
                    continue
                if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
                    raise DatasetError(f"{archive}: member {info.filename!r} would be written "
                                       f"outside the folder (a zip-slip name)")
                members.append(info)
            return members
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive} is not a zip archive ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{archive} cannot be read: {exc}") from exc


def extract(archive: Path, data_dir: Path) -> Path:
    """Extract and check ``archive`` into ``data_dir/dogImages`` through a temporary folder.

    Raises:
        DatasetError: a bad archive, wrong contents, or no space left; nothing is left behind.
    """
    members = _members(archive)
    work = Path(tempfile.mkdtemp(prefix=".dogImages-", dir=data_dir))
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in members:
                zf.extract(info, work)
        check(work / FOLDER)
        (work / FOLDER).replace(data_dir / FOLDER)
    except OSError as exc:
        free = shutil.disk_usage(data_dir).free / 2**20
        raise DatasetError(f"cannot extract {archive} into {data_dir} ({exc.strerror}; "
                           f"{free:.0f} MB free): free some space and run again") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data_dir / FOLDER


def ensure(data_dir: Path, say=print) -> Path:
    """``data_dir/dogImages``, checked: reused when there, else fetched and extracted.

    Raises:
        DogImagesUnavailable: the source cannot be reached.
        DatasetError: a failed download or a bad archive; the message says what to do.
    """
    data_dir = Path(data_dir)
    root = data_dir / FOLDER
    if root.is_dir():
        try:
            check(root)
        except DatasetError as exc:
            raise DatasetError(f"{exc}; delete {root} to fetch it again") from None
        say(f"reusing {root} (checked: {CLASSES} classes, "
            f"{', '.join(f'{n:,} {s}' for s, n in SPLITS.items())} photos)")
        return root
    data_dir.mkdir(parents=True, exist_ok=True)
    url = source()
    try:
        archive = fetch(url, data_dir / ARCHIVE)
    except Unreachable as exc:
        raise DogImagesUnavailable(str(exc)) from exc
    except FetchError as exc:
        raise DatasetError(str(exc)) from exc
    try:
        root = extract(archive, data_dir)
    except DatasetError as exc:
        if is_local(url):
            raise DatasetError(f"{exc}; check the archive DOG_IMAGES_URL names") from None
        archive.unlink(missing_ok=True)
        raise DatasetError(f"{exc}; the archive was deleted: run again to download it again, "
                           f"or set DOG_IMAGES_URL to a good copy") from None
    say(f"dogImages ready in {root}")
    return root
