"""The real image, built from our Dockerfile with podman (tests/container/conftest.py), runs
`train` and `serve` as SageMaker runs them: `IMAGE train` with /opt/ml mounted, then
`IMAGE serve` with the model it made.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, DOG_PHOTOS, ROOT, digit_channels, free_port, make_job
from tests.helpers.image import sh

pytestmark = pytest.mark.system



def test_hadolint_passes_on_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = sh(str(hadolint), str(ROOT / "Dockerfile"), check=False)
    assert result.returncode == 0, result.stdout


@contextlib.contextmanager
def serving(image: str, model_dir: Path, *env: str):
    """`IMAGE serve` on a free host port with ``model_dir`` mounted at /opt/ml/model and the
    ``NAME=VALUE`` settings ``env``, ready (/ping 200); yields (container name, base URL);
    removes the container after."""
    port = free_port()
    name = f"serve-{port}"
    settings = [arg for setting in env for arg in ("-e", setting)]
    sh("podman", "run", "-d", "--name", name, "--network", "host",
       "-e", f"SAGEMAKER_BIND_TO_PORT={port}", *settings, "-v", f"{model_dir}:/opt/ml/model:ro",
       image, "serve")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.5)
        assert ready, sh("podman", "logs", name, check=False).stdout[-3000:]
        yield name, url
    finally:
        sh("podman", "rm", "-f", name, check=False)


def classify(url: str) -> dict:
    """POST the first sample dog photo as image/jpeg; the JSON answer."""
    request = urllib.request.Request(url + "/invocations", data=DOG_PHOTOS[0].read_bytes(),
                                     headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def test_train_then_serve_in_the_container(image, tmp_path, digits_dir):
    base = make_job(tmp_path / "ml", digit_channels(digits_dir),
                    {"arch": "resnet18", "epochs": 2, "batch-size": 32, "lr": 0.05,
                     "image-size": 32, "pretrained": False, "num-workers": 1,
                     "max-images-per-class": 40}, copy=True)
    run = sh("podman", "run", "--rm", "-v", f"{base}:/opt/ml", image, "train", timeout=900,
             check=False)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "valid_accuracy=" in run.stdout and "Reporting training SUCCESS" in run.stdout
    manifest = json.loads((base / "model" / "manifest.json").read_text())
    assert (base / "model" / "model.pt2").is_file() and (base / "output" / "success").exists()

    with serving(image, base / "model") as (name, url):
        body = classify(url)
        assert body["model_version"] == manifest["model_version"]
        assert len(body["predictions"][0]["top_k"]) == 5
        assert body["predictions"][0]["top_k"][0]["label"] in manifest["classes"]

        start = time.monotonic()
        sh("podman", "kill", "--signal", "TERM", name)
        code = sh("podman", "wait", name, timeout=60).stdout.strip()
        assert time.monotonic() - start < 30
        assert code == "0", sh("podman", "logs", name, check=False).stdout[-3000:]


def test_failed_job_reports_a_failure_reason_from_the_container(image, tmp_path, digits_dir):
    base = make_job(tmp_path / "ml", digit_channels(digits_dir), {"lr": "fast"}, copy=True)
    run = sh("podman", "run", "--rm", "-v", f"{base}:/opt/ml", image, "train", check=False)
    assert run.returncode != 0
    assert "'lr'" in (base / "output" / "failure").read_text()


def test_sigterm_stops_training_in_the_container_with_a_servable_partial_model(image, tmp_path,
                                                                             digits_dir):
    """`podman kill --signal TERM` on `IMAGE train` (PID 1, as SageMaker runs it) mid-job: the
    container exits within the stop bound, with a checkpoint, a failure reason, and a partial
    model that `IMAGE serve` loads and answers with."""
    from train import stop_signal

    base = make_job(tmp_path / "ml", digit_channels(digits_dir),
                    {"arch": "resnet18", "epochs": 30, "batch-size": 16, "lr": 0.02,
                     "image-size": 32, "pretrained": False, "num-workers": 1,
                     "max-images-per-class": 40}, copy=True)
    name = f"train-{free_port()}"
    sh("podman", "run", "-d", "--name", name, "-v", f"{base}:/opt/ml", image, "train")
    try:
        first = base / "checkpoints" / "epoch-0001.pt"
        deadline = time.monotonic() + 300
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.exists(), sh("podman", "logs", name, check=False).stdout[-3000:]
        time.sleep(1.0)  # into epoch 2
        start = time.monotonic()
        sh("podman", "kill", "--signal", "TERM", name)
        code = sh("podman", "wait", name, timeout=150).stdout.strip()
        seconds = time.monotonic() - start
        logs = sh("podman", "logs", name, check=False).stdout
    finally:
        sh("podman", "rm", "-f", name, check=False)
    assert code == "1", logs[-3000:]
    assert seconds < stop_signal.STOP_DEADLINE_S, seconds
    failure = (base / "output" / "failure").read_text()
    match = re.match(r"stopped by SIGTERM at epoch (\d+), step \d+ of \d+; checkpoint "
                     r"checkpoints/(\S+\.pt); model written from epoch (\d+)$", failure)
    assert match, failure
    assert (base / "checkpoints" / match.group(2)).is_file()
    assert not (base / "output" / "success").exists()
    manifest = json.loads((base / "model" / "manifest.json").read_text())
    assert manifest["training"]["complete"] is False
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "container-stop.json").write_text(json.dumps(
        {"stop_seconds": round(seconds, 2), "failure": failure}))

    # Served eagerly: that it loads and answers is the point here, and compiling in the image
    # is test_train_then_serve_in_the_container's (each container starts with an empty store).
    with serving(image, base / "model", "SERVE_COMPILE=off") as (_, url):
        body = classify(url)
    assert body["model_version"] == manifest["model_version"]
    assert body["predictions"][0]["top_k"][0]["label"] in manifest["classes"]


def test_train_local_sh_smoke_tests_the_image(image, tmp_path):
    """The README's pre-push smoke test, with podman: the digits recipe in `IMAGE train`."""
    import os

    env = dict(os.environ, DOCKER="podman", PYTHON=sys.executable,
               DATA=str(tmp_path / "digits"))
    run = sh("bash", str(ROOT / "container" / "local_test" / "train_local.sh"), image,
             "epochs=1", timeout=900, env=env)
    assert "Reporting training SUCCESS" in run.stdout
    model = ROOT / "container" / "local_test" / "test_dir" / "opt_ml" / "model"
    assert json.loads((model / "manifest.json").read_text())["hyperparameters"]["lr"] == 0.02
