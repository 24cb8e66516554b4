"""Writing the artifact (train/export/artifact.py) and atomic files (train/checkpoint.py) when the
disk or torch's writer fails, and the order that keeps an older artifact whole until the new program
is in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import full_disk, write_untrained_artifact
from train import checkpoint
from train.export import artifact
from train.errors import TrainingError


def snapshot(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir())}


@pytest.fixture
def small_tmpfs(tmp_path):
    """A full disk: a 1 MiB tmpfs, unmounted afterwards."""
    folder = tmp_path / "small"
    folder.mkdir()
    with full_disk(folder):
        yield folder


def test_an_older_manifest_stays_until_the_new_program_replaces_it_and_never_describes_it(
        tmp_path, monkeypatch):
    model_dir = write_untrained_artifact(tmp_path / "model", 2)
    (model_dir / artifact.INT8_PROGRAM).write_bytes(b"an older job's int8 program")
    old_manifest = (model_dir / artifact.MANIFEST).read_text()
    seen = {}
    save = torch.export.save

    def save_and_look(program, f):
        seen["manifest while exporting"] = (model_dir / artifact.MANIFEST).read_text()
        save(program, f)

    replace = checkpoint.os.replace

    def replace_and_look(src, dst):
        if Path(dst).name == artifact.PROGRAM:
            seen["files when the program moves in"] = sorted(p.name for p in model_dir.iterdir())
        replace(src, dst)

    monkeypatch.setattr(torch.export, "save", save_and_look)
    monkeypatch.setattr(checkpoint.os, "replace", replace_and_look)
    write_untrained_artifact(model_dir, 3)
    assert seen["manifest while exporting"] == old_manifest  # the old artifact was whole
    assert seen["files when the program moves in"] == [".tmp-model.pt2", "model.pt2"]
    manifest = json.loads((model_dir / artifact.MANIFEST).read_text())
    assert manifest["num_classes"] == 3
    digest = hashlib.sha256((model_dir / artifact.PROGRAM).read_bytes()).hexdigest()
    assert manifest["program_sha256"] == digest
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.pt2"]


def test_a_failing_program_writer_keeps_the_older_artifact_and_names_the_cause(tmp_path,
                                                                               monkeypatch):
    model_dir = write_untrained_artifact(tmp_path / "model", 2)
    before = snapshot(model_dir)

    def broken_save(program, f):
        f.write(b"PK\x03\x04 half an archive")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 2 vs 1\n"
                           "frame #0: c10::ThrowEnforceNotMet")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(TrainingError, match=r"cannot save the model program: RuntimeError: "
                                            r"\[enforce fail .* unexpected pos 2 vs 1$"):
        write_untrained_artifact(model_dir, 2)
    assert snapshot(model_dir) == before


def test_a_full_disk_fails_the_export_with_the_cause_and_no_temporary_file(small_tmpfs):
    # Before the fix, torch's archive writer hit the full disk itself and aborted the process.
    with pytest.raises(TrainingError, match="cannot write the model program .*model.pt2: no "
                                            "space left on the device"):
        write_untrained_artifact(small_tmpfs, 10)
    assert list(small_tmpfs.iterdir()) == []
