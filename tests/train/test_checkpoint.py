"""Checkpoints are atomic: a full disk or a cut-off file never costs the last good one."""

import errno

import pytest
import torch

from train import checkpoint
from train.errors import TrainingError


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, {"epoch": 1, "w": torch.ones(3)})

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(TrainingError, match="no space left on the device"):
        checkpoint.save(tmp_path, 2, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["epoch-0001.pt"]  # no temp file left
    assert checkpoint.load_latest(tmp_path)["epoch"] == 1


def test_a_cut_off_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    checkpoint.save(tmp_path, 1, {"epoch": 1})
    checkpoint.save(tmp_path, 2, {"epoch": 2})
    newest = tmp_path / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:20])
    assert checkpoint.load_latest(tmp_path)["epoch"] == 1


def test_only_the_newest_two_are_kept(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, {"epoch": epoch})
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["epoch-0004.pt",
                                                                      "epoch-0003.pt"]
    assert checkpoint.load_latest(tmp_path / "absent") is None
