"""train/data.py's class discovery (train/layout.py's rule) on small trees; no training."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from torchvision.datasets.folder import IMG_EXTENSIONS

from tests.conftest import DOG_PHOTOS
from train import data, layout
from train.errors import TrainingError


def channel(root: Path, classes: dict[str, int]) -> Path:
    """``root`` with one folder per class holding that many sample photos."""
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            shutil.copy(DOG_PHOTOS[i], root / name / f"{i}.jpg")
    return root


def not_classes(root: Path) -> None:
    """What is no class: empty, macOS metadata, hidden (with a photo in it)."""
    (root / "003.Empty").mkdir()
    (root / "__MACOSX" / "001.Affenpinscher").mkdir(parents=True)
    (root / "__MACOSX" / "001.Affenpinscher" / "._0.jpg").write_bytes(b"\0\5\26\7")
    (root / ".thumbnails").mkdir()
    shutil.copy(DOG_PHOTOS[0], root / ".thumbnails" / "0.jpg")


def test_image_extensions_are_torchvision_s():
    assert layout.IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_empty_hidden_and_macos_folders_are_skipped_with_one_warning_each(tmp_path, caplog):
    train = channel(tmp_path / "train", {"001.Affenpinscher": 2, "002.Afghan_hound": 2})
    valid = channel(tmp_path / "valid", {"001.Affenpinscher": 1, "002.Afghan_hound": 1})
    not_classes(train)
    not_classes(valid)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        classes = data.discover_classes({"train": str(train), "valid": str(valid)})
    assert classes == ["001.Affenpinscher", "002.Afghan_hound"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"channel {name}: {root}: skipping 3 folders that are not a class: .thumbnails "
        "(hidden), 003.Empty (no photos), __MACOSX (macOS archive metadata)"
        for name, root in (("train", train), ("valid", valid))
    ]


def test_the_datasets_read_the_photos_the_tools_count(tmp_path):
    """A hidden ``._`` file beside the photos is no photo for the job, as for the tools."""
    from tools.folders import count_images

    train = channel(tmp_path / "train", {"001.Affenpinscher": 3, "002.Afghan_hound": 2})
    channel(tmp_path / "valid", {"001.Affenpinscher": 1, "002.Afghan_hound": 1})
    (train / "001.Affenpinscher" / "._0.jpg").write_bytes(b"\0\5\26\7")
    channels = {s: str(tmp_path / s) for s in ("train", "valid")}
    classes = data.discover_classes(channels)
    built = data.build_datasets(channels, classes, data.Preprocess.for_size(32), 0.5, 0, 0)
    assert {s: len(ds) for s, ds in built.items()} == {
        s: n for s, (_, n) in count_images(tmp_path).items()} == {"train": 5, "valid": 2}


def test_a_channel_whose_folders_are_all_skipped_fails_naming_the_channel(tmp_path):
    train = channel(tmp_path / "train", {"001.Affenpinscher": 2, "002.Afghan_hound": 2})
    valid = tmp_path / "valid"
    valid.mkdir()
    not_classes(valid)
    with pytest.raises(TrainingError) as failed:
        data.discover_classes({"train": str(train), "valid": str(valid)})
    assert str(failed.value) == (
        f"channel 'valid' has no image files ({', '.join(IMG_EXTENSIONS)}) in a class folder "
        f"at {valid}; its folders: .thumbnails (hidden), 003.Empty (no photos), __MACOSX "
        "(macOS archive metadata)")


def test_an_empty_train_folder_is_no_class_so_valid_s_photos_of_it_fail(tmp_path):
    """An empty folder in train no longer makes a class without photos: valid's photos of that
    breed then name it as a class train lacks."""
    train = channel(tmp_path / "train", {"001.Affenpinscher": 2, "002.Afghan_hound": 2})
    (train / "003.Basenji").mkdir()
    valid = channel(tmp_path / "valid", {"001.Affenpinscher": 1, "003.Basenji": 1})
    with pytest.raises(TrainingError, match="'valid' has classes that train lacks: 003.Basenji"):
        data.discover_classes({"train": str(train), "valid": str(valid)})
