"""tools/datasets.py: what a class folder is (the training job's rule, train/layout.py), and a
subset or a digits set never deleting its source or a folder that is not a data set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import DOG_PHOTOS
from tools import datasets
from tools.folders import DatasetError, count_images


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def messy(tmp_path) -> Path:
    """Two real classes per split (3 photos each in train, 1 in valid), plus what is no class:
    an empty class folder, one holding only a text file, macOS's __MACOSX (with its ``._``
    companions) and a hidden folder with a JPEG in it; a hidden ``._`` file beside real
    photos."""
    root = tmp_path / "messy"
    for split, n in (("train", 3), ("valid", 1)):
        for c in ("001.Affenpinscher", "002.Afghan_hound"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                shutil.copy(DOG_PHOTOS[i], folder / f"{c}_{i}.jpg")
        (root / split / "003.Empty").mkdir()
        (root / split / "004.Notes").mkdir()
        (root / split / "004.Notes" / "README.txt").write_text("no photos here")
        (root / split / "__MACOSX" / "001.Affenpinscher").mkdir(parents=True)
        (root / split / "__MACOSX" / "001.Affenpinscher" / "._a.jpg").write_bytes(b"\0\5\26\7")
        (root / split / ".cache").mkdir()
        shutil.copy(DOG_PHOTOS[0], root / split / ".cache" / "thumb.jpg")
    (root / "train" / "001.Affenpinscher" / "._001.Affenpinscher_0.jpg").write_bytes(b"\0\5\26\7")
    return root


def test_only_class_folders_with_photos_count_and_each_split_warns_once(messy, capsys):
    assert count_images(messy) == {"train": (2, 6), "valid": (2, 2)}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    for split, line in zip(("train", "valid"), lines):
        assert line == (f"warning: {messy / split}: skipping 4 folders that are not a class: "
                        ".cache (hidden), 003.Empty (no photos), 004.Notes (no photos), "
                        "__MACOSX (macOS archive metadata)")


def test_subset_copies_class_folders_only_and_warns(messy, tmp_path, capsys):
    out = datasets.subset(messy, tmp_path / "small", per_class=2)
    assert count_images(out) == {"train": (2, 4), "valid": (2, 2)}
    for split in ("train", "valid"):
        assert sorted(p.name for p in (out / split).iterdir()) == ["001.Affenpinscher",
                                                                   "002.Afghan_hound"]
    assert not [p for p in out.rglob(".*")]  # no hidden file or folder came along
    assert "skipping 4 folders" in capsys.readouterr().err


@pytest.mark.parametrize("dest", [".", "train", "train/001.Affenpinscher", ".."])
def test_subset_onto_its_own_source_is_refused_and_the_source_is_intact(messy, dest):
    """The source itself, a folder inside it, or a folder holding it: replacing dest would
    delete the source."""
    before = snapshot(messy)
    with pytest.raises(DatasetError, match="would delete the source"):
        datasets.subset(messy, messy / dest, per_class=1)
    assert snapshot(messy) == before


def test_a_destination_that_is_not_a_data_set_is_never_replaced(messy, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(DatasetError, match=r"notes exists and is not a data set \(it holds "
                                           r"todo.txt\)"):
        datasets.subset(messy, notes, per_class=1)
    with pytest.raises(DatasetError, match="not a data set"):
        datasets.write_digits(notes, per_class=6)
    assert (notes / "todo.txt").read_text() == "keep me"
    # A data set there is replaced, as before.
    again = datasets.subset(messy, tmp_path / "small", per_class=1)
    assert datasets.subset(messy, again, per_class=2) == again
    assert count_images(again)["train"] == (2, 4)


def test_cli_subset_onto_the_downloaded_set_is_refused_before_any_download(messy, tmp_path,
                                                                          monkeypatch, capsys):
    """`python -m tools.datasets dogs data/dogImages --per-class 5` named the set it reads as
    its destination, and deleted it."""
    data = tmp_path / "data"
    data.mkdir()
    dog_images = messy.rename(data / "dogImages")
    before = snapshot(dog_images)
    monkeypatch.setenv("DOG_IMAGES_URL", "http://127.0.0.1:9/dogImages.zip")  # nothing listens
    assert datasets.main(["dogs", str(dog_images), "--per-class", "5"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {dog_images} is the source {dog_images}: writing it would delete "
                   f"the source; choose a destination outside it (e.g. {dog_images}-5)\n")
    assert snapshot(dog_images) == before
    assert datasets.main(["digits", str(data)]) == 1  # data/ holds dogImages: not a data set
    assert "not a data set (it holds dogImages)" in capsys.readouterr().err
    assert snapshot(dog_images) == before


def test_digits_have_no_empty_class_folders(tmp_path):
    few = datasets.write_digits(tmp_path / "few", image_size=8, per_class=3)
    assert not (few / "test").exists()  # 3 per class: 2 train, 1 valid, none left for test
    assert count_images(few) == {"train": (10, 20), "valid": (10, 10)}
    enough = datasets.write_digits(tmp_path / "enough", image_size=8, per_class=6)
    assert count_images(enough) == {"train": (10, 40), "valid": (10, 10),
                                             "test": (10, 10)}
