"""Checkpoints are atomic: a full disk or a cut-off file never costs the last good one."""

import errno
from pathlib import Path

import pytest
import torch

from tests.conftest import full_disk
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
    assert checkpoint.load_latest(tmp_path)[0]["epoch"] == 1


def test_a_cut_off_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    checkpoint.save(tmp_path, 1, {"epoch": 1})
    checkpoint.save(tmp_path, 2, {"epoch": 2})
    newest = tmp_path / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:20])
    assert checkpoint.load_latest(tmp_path)[0]["epoch"] == 1


def test_only_the_newest_two_are_kept(tmp_path):
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, {"epoch": epoch})
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["epoch-0004.pt",
                                                                      "epoch-0003.pt"]
    assert checkpoint.load_latest(tmp_path / "absent") is None


def test_names_order_by_training_done_and_step_checkpoints_count(tmp_path):
    checkpoint.save(tmp_path, 2, {"epoch": 2})
    checkpoint.save(tmp_path, 2, {"epoch": 2, "step": 7}, step=7)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "epoch-0002-step-000007.pt", "epoch-0002.pt"]
    assert checkpoint.position(tmp_path / "epoch-0002-step-000007.pt") == (2, 7)
    checkpoint.save(tmp_path, 3, {"epoch": 3})
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "epoch-0003.pt", "epoch-0002-step-000007.pt"]


def test_when_every_checkpoint_is_corrupt_new_ones_are_kept(tmp_path):
    """Corrupt checkpoints of a later epoch than the job has reached never outrank (and so
    never delete) the ones it writes: they are set aside, kept for a look."""
    for epoch in (8, 9):
        (tmp_path / f"epoch-{epoch:04d}.pt").write_bytes(b"not a checkpoint")
    assert checkpoint.load_latest(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0008.pt.unreadable",
                                                           "epoch-0009.pt.unreadable"]
    checkpoint.save(tmp_path, 1, {"epoch": 1})
    checkpoint.save(tmp_path, 2, {"epoch": 2})
    state, path = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 2 and path.name == "epoch-0002.pt"
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["epoch-0002.pt",
                                                                      "epoch-0001.pt"]


def test_generators_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    checkpoint.atomic_save({"rng": checkpoint.rng_state(cuda=False)}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    checkpoint.set_rng_state(state["rng"], cuda=False)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_write_that_fails_with_any_error_leaves_no_temporary_file(tmp_path):
    """torch.save on a full disk raises RuntimeError during handling of the OSError: the cause
    is found in the chain, the temporary file removed and the previous file kept."""
    path = tmp_path / "epoch-0001.pt"
    path.write_bytes(b"the previous checkpoint")

    def torch_save_on_a_full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos")

    with pytest.raises(TrainingError, match="cannot write checkpoint .*epoch-0001.pt: no space "
                                            "left on the device; earlier files are kept"):
        checkpoint.atomic_write(path, torch_save_on_a_full_disk, "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt"]
    assert path.read_bytes() == b"the previous checkpoint"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"x")
        raise ValueError("a writer bug")

    with pytest.raises(TrainingError, match="ValueError: a writer bug"):
        checkpoint.atomic_write(path, broken, "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt"]


def test_a_real_full_disk_fails_a_checkpoint_with_the_cause_and_no_temporary_file(tmp_path):
    state = {"model": torch.zeros(1 << 19)}  # 2 MiB on a 1 MiB disk
    with full_disk(tmp_path):
        with pytest.raises(TrainingError, match="no space left on the device"):
            checkpoint.save(tmp_path, 1, state)
        assert list(tmp_path.iterdir()) == []
