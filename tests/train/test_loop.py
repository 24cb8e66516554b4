"""train.loop in-process: when the DataLoader workers start, and where a resumed job starts."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.conftest import digit_channels
from train import hyperparameters, loop
from train.debugger import hook as debugger
from train.errors import TrainingError

HP = {"arch": "resnet18", "epochs": 1, "batch-size": 16, "image-size": 16, "pretrained": False,
      "num-workers": 1, "max-images-per-class": 4, "debugger-rules": False}


def make_trainer(tmp_path: Path, digits_dir: Path, **overrides) -> loop.Trainer:
    job = loop.Job(channels={k: str(v) for k, v in digit_channels(digits_dir).items()},
                   hyperparameters=hyperparameters.parse({**HP, **overrides}),
                   model_dir=str(tmp_path / "model"), output_data_dir=str(tmp_path / "data"),
                   checkpoint_dir=str(tmp_path / "ckpt"), input_config_dir=str(tmp_path / "cfg"))
    return loop.Trainer(job, loop.Dist())


def test_workers_start_before_the_hook_and_the_first_step(tmp_path, digits_dir, monkeypatch):
    calls = []
    start_workers = loop.Trainer.start_workers
    monkeypatch.setattr(loop.Trainer, "start_workers",
                        lambda self: calls.append("start_workers") or start_workers(self))
    monkeypatch.setattr(debugger, "create_hook", lambda *args: calls.append("create_hook"))
    before = {p.pid for p in psutil.Process().children()}
    trainer = make_trainer(tmp_path, digits_dir)
    assert calls == ["start_workers", "create_hook"]
    # One worker process per split (num-workers=1), forked and kept (persistent workers).
    workers = [p for p in psutil.Process().children() if p.pid not in before]
    assert len(workers) == 3 and all(p.is_running() for p in workers)
    assert set(trainer.feed.first_pass) == {"train", "valid", "test"}


@pytest.mark.model  # trains a few steps in-process
def test_each_split_s_first_pass_reads_the_whole_split(tmp_path, digits_dir, monkeypatch):
    trainer = make_trainer(tmp_path, digits_dir)
    images = []
    forward = loop.Trainer._forward
    monkeypatch.setattr(loop.Trainer, "_forward",
                        lambda self, x, y: images.append(len(y)) or forward(self, x, y))
    n_train = len(trainer.feed.datasets["train"])
    trainer.train_epoch(0)  # from the iterator started in the constructor
    assert "train" not in trainer.feed.first_pass and sum(images) == n_train
    trainer.train_epoch(1)  # a fresh pass over the same workers
    assert sum(images) == 2 * n_train
    first, _ = trainer.evaluate("valid")  # from the iterator started in the constructor
    assert "valid" not in trainer.feed.first_pass
    again, _ = trainer.evaluate("valid")
    assert first == pytest.approx(again)


@pytest.mark.model  # trains a few steps in-process
def test_a_resumed_job_spreads_the_hook_saves_over_the_epochs_left(tmp_path, digits_dir,
                                                                    monkeypatch):
    make_trainer(tmp_path, digits_dir, epochs=1).fit()  # leaves the checkpoint of epoch 1
    planned = []
    monkeypatch.setattr(debugger, "create_hook", lambda *args: planned.append(args[-1]))
    trainer = make_trainer(tmp_path, digits_dir, epochs=3, **{"debugger-rules": True})
    assert trainer.state.epoch == 1  # the epoch it resumes in
    # smdebug counts steps from 0 in every process: 2 epochs of steps are left, not 3.
    assert planned == [len(trainer.feed.loaders["train"]) * 2] == [trainer.planned_steps()]


@pytest.mark.model  # trains a few steps in-process
def test_a_checkpoint_for_another_arch_fails_clearly_and_is_kept(tmp_path, digits_dir):
    make_trainer(tmp_path, digits_dir).fit()  # resnet18, checkpoint of epoch 1
    kept = sorted((tmp_path / "ckpt").iterdir())
    assert kept
    with pytest.raises(TrainingError, match=r"is for arch 'resnet18'.*empty the checkpoint"):
        make_trainer(tmp_path, digits_dir, arch="resnet34")
    assert sorted((tmp_path / "ckpt").iterdir()) == kept
