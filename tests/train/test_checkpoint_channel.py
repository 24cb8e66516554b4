"""Checkpoints outside checkpoint_s3_uri: a stopped job whose checkpoints are synced nowhere keeps
the stop's checkpoint in its output (output.tar.gz), and a job given a ``checkpoints`` channel
(checkpoint files, or that output.tar.gz) resumes from it. The SDK's local mode needs both: it
ignores checkpoint_s3_uri and mounts nothing at /opt/ml/checkpoints."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train import checkpoint, entry, loop
from train.errors import TrainingError


def _state(epochs: int, step: int = 0) -> dict:
    return {"epoch": epochs, "step": step, "w": torch.full((3,), float(epochs))}


def _output_tar(path: Path, members: dict[str, bytes], links: dict[str, str] = {}) -> Path:
    """A tar.gz with regular files ``members`` (name -> bytes) and symlinks ``links``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _checkpoint_bytes(tmp_path: Path, epochs: int, step: int = 0) -> bytes:
    path = checkpoint.save(tmp_path / "made", epochs, _state(epochs, step), step=step)
    return path.read_bytes()


def test_a_channel_of_checkpoint_files_seeds_an_empty_checkpoint_folder(tmp_path):
    channel, ckpt = tmp_path / "channel", tmp_path / "checkpoints"
    checkpoint.save(channel, 1, _state(1))
    checkpoint.save(channel / "prefix", 1, _state(1, 5), step=5)  # anywhere under the channel
    written = checkpoint.seed_from_channel(channel, ckpt)
    assert [p.name for p in written] == ["epoch-0001-step-000005.pt", "epoch-0001.pt"]
    state, path = checkpoint.load_latest(ckpt)
    assert path.name == "epoch-0001-step-000005.pt" and state["step"] == 5


def test_newer_checkpoints_already_in_the_folder_win_over_the_channel(tmp_path):
    """A restarted job (its synced folder filled) goes on from its own, newer checkpoint."""
    channel, ckpt = tmp_path / "channel", tmp_path / "checkpoints"
    checkpoint.save(channel, 2, _state(2))
    checkpoint.save(ckpt, 3, _state(3))
    assert checkpoint.seed_from_channel(channel, ckpt) == []
    assert [p.name for p in checkpoint.list_checkpoints(ckpt)] == ["epoch-0003.pt"]


def test_a_stopped_jobs_output_tar_gz_seeds_the_folder_and_nothing_leaves_it(tmp_path):
    channel, ckpt = tmp_path / "channel", tmp_path / "checkpoints"
    channel.mkdir()
    stop = _checkpoint_bytes(tmp_path, 2, 7)
    _output_tar(channel / "output.tar.gz",
                {"failure": b"stopped by SIGTERM", "data/metrics.json": b"{}",
                 "data/checkpoints/epoch-0002-step-000007.pt": stop,
                 "../../epoch-0001.pt": _checkpoint_bytes(tmp_path, 1)},
                links={"data/checkpoints/epoch-0009.pt": "/etc/passwd"})
    written = checkpoint.seed_from_channel(channel, ckpt)
    assert [p.name for p in written] == ["epoch-0002-step-000007.pt", "epoch-0001.pt"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0001.pt",
                                                      "epoch-0002-step-000007.pt"]
    assert not (tmp_path.parent / "epoch-0001.pt").exists()
    assert (ckpt / "epoch-0002-step-000007.pt").read_bytes() == stop
    assert checkpoint.load_latest(ckpt)[0]["step"] == 7


def test_a_channel_without_checkpoints_fails_the_job_naming_the_channel(tmp_path):
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "notes.txt").write_text("no checkpoint here")
    (channel / "broken.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(TrainingError, match="'checkpoints' channel holds no checkpoint"):
        checkpoint.seed_from_channel(channel, tmp_path / "checkpoints")


def test_keep_in_output_copies_the_newest_checkpoint_only(tmp_path):
    ckpt, data = tmp_path / "checkpoints", tmp_path / "output" / "data"
    assert checkpoint.keep_in_output(ckpt, data) is None
    checkpoint.save(ckpt, 1, _state(1))
    checkpoint.save(ckpt, 1, _state(1, 4), step=4)
    kept = checkpoint.keep_in_output(ckpt, data)
    assert kept == data / "checkpoints" / "epoch-0001-step-000004.pt"
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]
    assert kept.read_bytes() == (ckpt / kept.name).read_bytes()


# ------------------------------------------------------------ train.entry:main wires them in
def _fake_environment(base: Path, channels: dict, hosts=("algo-1",), current="algo-1"):
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(
        channel_input_dirs={k: str(v) for k, v in channels.items()}, hyperparameters={},
        model_dir=str(base / "model"), output_data_dir=str(base / "output" / "data"),
        output_dir=str(base / "output"), input_config_dir=str(config), job_name="job",
        hosts=list(hosts), current_host=current, num_gpus=0)


@pytest.fixture
def fake_job(tmp_path, monkeypatch):
    """train.entry:main against a fake /opt/ml under tmp_path whose training (loop.run) writes
    a checkpoint and is stopped; returns (set-up function, the base folder, calls)."""
    base = tmp_path / "ml"
    calls: list[dict] = []

    def stopped_run(job, d=None):
        calls.append({"found": [p.name for p in checkpoint.list_checkpoints(job.checkpoint_dir)]})
        checkpoint.save(job.checkpoint_dir, 1, _state(1, 3), step=3)
        raise loop.JobStopped("stopped by SIGTERM at epoch 2, step 3 of 9")

    def setup(channels: dict | None = None, synced: bool = False, **hosts):
        env = _fake_environment(base, channels or {}, **hosts)
        if synced:
            (Path(env.input_config_dir) / "checkpointconfig.json").write_text(
                '{"LocalPath": "%s"}' % (base / "checkpoints"))
        monkeypatch.setattr(entry.environment, "Environment", lambda: env)
        monkeypatch.setattr(entry.environment, "base_dir", str(base))
        monkeypatch.setattr(entry, "install_stop_handler", lambda: None)  # not in pytest
        monkeypatch.setattr(loop, "run", stopped_run)
        return env

    return setup, base, calls


def test_a_stopped_job_synced_nowhere_keeps_its_checkpoint_in_the_output(fake_job):
    setup, base, _ = fake_job
    setup()
    with pytest.raises(loop.JobStopped):
        entry.main()
    kept = base / "output" / "data" / "checkpoints" / "epoch-0001-step-000003.pt"
    assert kept.read_bytes() == (base / "checkpoints" / kept.name).read_bytes()


@pytest.mark.parametrize("case", ["synced", "not the first host"])
def test_a_synced_job_or_another_host_keeps_no_copy(fake_job, case, monkeypatch):
    """checkpoint_s3_uri has the checkpoint already; rank 0 (the checkpoint's writer) runs on
    the first host, so another host has nothing to keep."""
    setup, base, _ = fake_job
    if case == "synced":
        setup(synced=True)
    else:
        setup(hosts=("algo-1", "algo-2"), current="algo-2")
        monkeypatch.setattr(entry, "_torchrun", lambda env, job, nproc: loop.run(job))
    with pytest.raises(loop.JobStopped):
        entry.main()
    assert not (base / "output" / "data" / "checkpoints").exists()


def test_a_checkpoints_channel_seeds_the_folder_before_training(fake_job, tmp_path):
    setup, _, calls = fake_job
    channel = tmp_path / "previous-output"
    channel.mkdir()
    _output_tar(channel / "output.tar.gz",
                {"data/checkpoints/epoch-0001-step-000002.pt": _checkpoint_bytes(tmp_path, 1, 2)})
    setup(channels={"checkpoints": channel})
    with pytest.raises(loop.JobStopped):
        entry.main()
    assert calls == [{"found": ["epoch-0001-step-000002.pt"]}]
