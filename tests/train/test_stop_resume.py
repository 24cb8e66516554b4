"""SIGTERM stops a training job at a step boundary with a checkpoint and a model, and the job
resumes exactly: the resumed run ends with the uninterrupted run's epochs, metric lines and
final weights, bit for bit (CPU).

Each run is a fresh process (tests/train/stop_driver.py): smdebug and the stop handler keep
process-wide state.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.model

# 8 photos per class: 80 training photos, 5 steps of 16 per epoch, 3 epochs.
# No int8 program: resuming is about the weights, and calibrating one is a large part of a run.
HP = {"arch": "resnet18", "epochs": 3, "batch-size": 16, "lr": 0.05, "image-size": 16,
      "pretrained": False, "num-workers": 1, "debugger-rules": False,
      "int8-calibration-images": 0}
TIMINGS = ("images_per_second", "epoch_seconds")


def drive(data: Path, out: Path, point: str = "none", **overrides) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.train.stop_driver", str(data), str(out),
                           json.dumps({**HP, **overrides}), point],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def history(out: Path) -> list[dict]:
    """The final checkpoint's per-epoch metrics, timings left out."""
    state = torch.load(out / "checkpoints" / f"epoch-{HP['epochs']:04d}.pt", weights_only=True)
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in state["history"]]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoints" / f"epoch-{HP['epochs']:04d}.pt", weights_only=True)
    return state["model"]


def metric_lines(log: str) -> list[str]:
    return [re.sub(r" (images_per_second|epoch_seconds)=\S+", "", line)
            for line in log.splitlines() if re.match(r"(epoch|test_loss)=", line)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, digits_dir) -> Path:
    from tools.datasets import subset

    return subset(digits_dir, tmp_path_factory.mktemp("stop") / "data", per_class=8)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("whole")
    run = drive(data, out)
    assert run.returncode == 0, run.stderr[-3000:]
    (out / "log").write_text(run.stdout)
    return out


def test_an_uninterrupted_run_is_reproducible(tmp_path, data, uninterrupted):
    """The bar the resumed runs are held to: the same job twice gives the same bits."""
    run = drive(data, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, tensor in final_weights(uninterrupted).items():
        assert torch.equal(tensor, final_weights(tmp_path)[name]), name


@pytest.mark.parametrize("point, where, checkpoint_name", [
    ("train:1:0", "at epoch 1, step 1 of 5", "epoch-0000-step-000001.pt"),
    ("train:2:2", "at epoch 2, step 3 of 5", "epoch-0001-step-000003.pt"),
    ("train:2:4", "at epoch 2, step 5 of 5", "epoch-0001-step-000005.pt"),
    ("valid:2:1", "at epoch 2, step 5 of 5 (in its validation pass)", "epoch-0001-step-000005.pt"),
    ("checkpoint:1", "at epoch 2, step 0 of 5", "epoch-0001.pt"),
])
def test_stop_then_resume_ends_where_the_uninterrupted_run_ends(tmp_path, data, uninterrupted,
                                                                point, where, checkpoint_name):
    stopped = drive(data, tmp_path, point)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.startswith(f"stopped by SIGTERM {where}; checkpoint "
                              f"checkpoints/{checkpoint_name}; "), failure
    assert (tmp_path / "checkpoints" / checkpoint_name).is_file()
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["training"]["complete"] is False
    assert manifest["training"]["stopped_by"] == "SIGTERM"
    if point == "train:1:0":  # nothing validated yet: the weights after the one step
        assert "model written from the weights after epoch 1, step 1" in failure
        assert manifest["training"]["weights_from"] == "the weights after epoch 1, step 1"
    else:
        assert "model written from epoch 1" in failure
        assert manifest["training"]["epochs_completed"] == 1
    program = torch.export.load(str(tmp_path / "model" / "model.pt2")).module()
    assert program(torch.zeros(1, 3, 16, 16)).shape == (1, 10)

    resumed = drive(data, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from checkpoint {checkpoint_name}" in resumed.stderr
    whole_lines = metric_lines((uninterrupted / "log").read_text())
    lines = metric_lines(stopped.stdout) + metric_lines(resumed.stdout)
    assert lines == whole_lines
    assert history(tmp_path) == history(uninterrupted)
    for name, tensor in final_weights(uninterrupted).items():
        assert torch.equal(tensor, final_weights(tmp_path)[name]), name
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["training"]["complete"] is True


def test_resume_with_other_workers_and_more_epochs_follows_the_new_schedule(tmp_path, data,
                                                                            uninterrupted):
    """Augmentation is a function of (seed, epoch, photo): the resumed process may have another
    number of DataLoader workers and still train on the same batches; a larger ``epochs``
    stretches the cosine schedule from where the job stopped."""
    stopped = drive(data, tmp_path, "train:2:2")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    same = drive(data, tmp_path / "copy", "none", **{"num-workers": 0})  # a control, afresh
    assert same.returncode == 0
    for name, tensor in final_weights(uninterrupted).items():
        assert torch.equal(tensor, final_weights(tmp_path / "copy")[name]), name

    resumed = drive(data, tmp_path, "none", epochs=5, **{"num-workers": 0})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epochs changed from 3 to 5" in resumed.stderr
    rates = [float(v) for v in re.findall(r"learning_rate=(\S+)", stopped.stdout + resumed.stdout)]
    # Epoch 1 ran under the 3-epoch schedule; from epoch 2 on, the 5-epoch one.
    lr = HP["lr"]
    expected = [lr] + [lr * (1 + torch.cos(torch.tensor(torch.pi * t / 5)).item()) / 2
                       for t in range(1, 5)]
    assert rates == pytest.approx(expected, rel=1e-5)
    assert len(re.findall(r"^epoch=", stopped.stdout + resumed.stdout, re.M)) == 5


def test_the_model_survives_a_failing_report(tmp_path, data):
    """The artifact is written before the optional metrics plots and debugger report; when they
    fail, the failure is logged and the job succeeds with its model."""
    script = ("import sys; from train import outputs\n"
              "from train.debugger import rules\n"
              "def broken(*a, **k): raise RuntimeError('broke')\n"
              "outputs.write = rules.evaluate_all = broken\n"
              "from tests.train.stop_driver import main\n"
              "sys.exit(main(*sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", script, str(data), str(tmp_path),
                          json.dumps({**HP, "epochs": 1, "debugger-rules": True}), "none"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "metrics.json and the plots not written" in run.stderr
    assert "debugger report not written" in run.stderr
    assert (tmp_path / "model" / "manifest.json").is_file()
    log = run.stderr
    assert log.index("model artifact written") < log.index("metrics.json and the plots not")
