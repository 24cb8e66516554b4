"""A stop in the job's last minutes: after training, while the post-training passes (int8
calibration, serving precisions, drift baseline; train/export/post_training.py) add to the written
model. The model stays complete and servable, the pass in progress ends, and the manifest and
the failure file say which passes did not run. Also: the stop path when the model cannot be
written (a failing writer, a full disk).

The pass cases run the real ``container/train``, resumed from the checkpoints of the session's
trained digits job (a spot restart after the last epoch: the final evaluation, the export and
the passes, no training), with a log handler that sends SIGTERM when the pass logs its start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (FAST_HYPERPARAMETERS, ROOT, TRAIN_ENTRY, TrainingRun, digit_channels,
                            full_disk, make_job)
from train.export import post_training

pytestmark = pytest.mark.model

# container/train with a log handler that sends this process SIGTERM as a pass logs its start.
STOP_AT_PASS = """
import logging, os, runpy, signal, sys
name, entry = sys.argv[1:]
class StopWhenThePassStarts(logging.Handler):
    def emit(self, record):
        if record.getMessage() == f"post-training pass {name} started":
            os.kill(os.getpid(), signal.SIGTERM)
logging.getLogger("train.export.post_training").addHandler(StopWhenThePassStarts())
sys.argv = [entry]
runpy.run_path(entry, run_name="__main__")
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_accuracy(model_dir: Path, digits_dir: Path) -> float:
    """Top-1 accuracy of the artifact loaded by serve's own loader (fp32) on 5 test photos of
    each digit, decoded as serve decodes them."""
    from serve.decode import decode
    from serve.model import Classifier

    classifier = Classifier(model_dir, torch.device("cpu"))
    images, labels = [], []
    for label, folder in enumerate(classifier.manifest["class_folders"]):
        for path in sorted((digits_dir / "test" / folder).glob("*.jpg"))[:5]:
            images.append(decode(path.read_bytes(), classifier.geometry, 10**8, 10**8))
            labels.append(label)
    probabilities = classifier.forward(np.stack(images))
    return float((probabilities.argmax(1) == np.asarray(labels)).mean())


def test_an_uninterrupted_job_records_every_pass_done(trained_job):
    manifest = json.loads((trained_job.model_dir / "manifest.json").read_text())
    record = manifest["post_training"]
    assert {name: entry["status"] for name, entry in record.items()} == {
        name: "done" for name in post_training.PASSES}
    assert manifest["precisions"]["int8"]["program"] == record["int8_calibration"]["program"]
    int8 = trained_job.model_dir / record["int8_calibration"]["program"]
    assert sha256(int8) == record["int8_calibration"]["program_sha256"]
    assert manifest["baseline"]["images"] > 0


@pytest.mark.parametrize("stopped_at", post_training.PASSES)
def test_a_stop_in_a_post_training_pass_keeps_a_complete_servable_model(
        tmp_path, trained_job, digits_dir, stopped_at):
    base = make_job(tmp_path / "ml", digit_channels(digits_dir), FAST_HYPERPARAMETERS)
    shutil.copytree(trained_job.base / "checkpoints", base / "checkpoints")
    epochs = FAST_HYPERPARAMETERS["epochs"]
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", STOP_AT_PASS, stopped_at, str(TRAIN_ENTRY)],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    run = TrainingRun(base, proc.returncode, proc.stdout)
    assert run.returncode != 0, run.log[-3000:]
    assert f"resuming from checkpoint epoch-{epochs:04d}.pt" in run.log
    assert "did not finish within" not in run.log  # the watchdog was not needed
    assert not (base / "output" / "success").exists()

    cut = list(post_training.PASSES[post_training.PASSES.index(stopped_at):])
    manifest = json.loads((run.model_dir / "manifest.json").read_text())
    record = manifest["post_training"]
    for name in post_training.PASSES:
        expected = ({"status": "skipped", "reason": "stopped by SIGTERM"} if name in cut else
                    {"status": "done"})
        assert {k: record[name][k] for k in expected} == expected, record
    # The pass in progress ended: nothing of it or of the passes after it is in the manifest.
    assert ("precisions" in manifest) == (stopped_at == "baseline")
    assert "baseline" not in manifest
    assert (run.model_dir / "model-int8.pt2").exists() == (stopped_at != "int8_calibration")
    assert manifest["training"]["complete"] is True
    assert manifest["program_sha256"] == sha256(run.model_dir / "model.pt2")
    assert not [p.name for p in run.model_dir.iterdir() if p.name.startswith(".tmp-")]

    best = manifest["training"]["weights_from"]
    assert run.failure == (
        f"stopped by SIGTERM after all {epochs} epochs; checkpoint "
        f"checkpoints/epoch-{epochs:04d}.pt; model written from {best} (training complete; "
        f"post-training passes skipped: {', '.join(cut)}: "
        f"{'; '.join(post_training.WITHOUT[name] for name in cut)})"), run.failure

    # Servable: serve's loader takes it, and it classifies as the trained model does (the
    # recipe's lowest over 5 seeds here was 48/50, benchmarks/README.md).
    assert serve_accuracy(run.model_dir, digits_dir) >= 0.9


STOP_WITH_A_BROKEN_WRITER = """
import sys, torch
def broken_save(program, f, *args, **kwargs):
    f.write(b"PK half an archive")
    raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 18 vs 9")
torch.export.save = broken_save
from tests.train.stop_driver import main
sys.exit(main(*sys.argv[1:]))
"""

STOP_HP = {"arch": "resnet18", "epochs": 2, "batch-size": 16, "lr": 0.05, "image-size": 16,
           "pretrained": False, "num-workers": 0, "debugger-rules": False}


@pytest.fixture
def full_disk_model_dir(tmp_path):
    """``tmp_path/out/model`` on a full disk (a 1 MiB tmpfs)."""
    model_dir = tmp_path / "out" / "model"
    model_dir.mkdir(parents=True)
    with full_disk(model_dir):
        yield model_dir


@pytest.mark.parametrize("cause", ["writer", "full disk"])
def test_a_stop_whose_model_cannot_be_written_says_why(request, tmp_path, digits_dir, cause):
    from tools.datasets import subset

    data = subset(digits_dir, tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    if cause == "full disk":
        request.getfixturevalue("full_disk_model_dir")
        script = ("import sys; from tests.train.stop_driver import main; "
                  "sys.exit(main(*sys.argv[1:]))")
        expected = "no space left on the device"
    else:
        script = STOP_WITH_A_BROKEN_WRITER
        expected = ("RuntimeError: [enforce fail at inline_container.cc:671] . unexpected pos "
                    "18 vs 9")
    run = subprocess.run([sys.executable, "-c", script, str(data), str(out),
                          json.dumps(STOP_HP), "train:1:0"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 3, run.stderr[-3000:]  # the stop's own exit: JobStopped
    failure = (out / "output" / "failure").read_text()
    assert failure.startswith("stopped by SIGTERM at epoch 1, step 1 of 3; checkpoint "
                              "checkpoints/epoch-0000-step-000001.pt; model not written ("), failure
    assert expected in failure, failure
    assert (out / "checkpoints" / "epoch-0000-step-000001.pt").is_file()
    assert list((out / "model").iterdir()) == []
