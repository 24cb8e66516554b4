"""Shared fixtures: real data sets on disk and a model artifact made by the real `train` entry.

Everything here runs the same code SageMaker runs: ``container/train`` as a subprocess against a
temporary /opt/ml tree (``SAGEMAKER_BASE_DIR``), with hyperparameters written as strings the way
SageMaker writes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.datasets import DIGITS_RECIPE

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ENTRY = ROOT / "container" / "train"
DOG_PHOTOS = sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))
# Numbers and logs a person reads after the run, kept with the test output.
ARTIFACTS = ROOT / "out" / "test-artifacts"

# A small, honest training run: the digits recipe (resnet18 from scratch on 32-pixel digits),
# about a minute on 2 cores.
FAST_HYPERPARAMETERS = DIGITS_RECIPE


# The tiers (unit, model, system), their budgets and the checks that keep each test in its tier.
pytest_plugins = ["tests.helpers.tiers"]


@pytest.fixture(scope="session", autouse=True)
def _artifacts_folder():
    """out/test-artifacts/ exists before any test writes there, whichever tier runs alone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _compile_store(tmp_path_factory):
    """One compile store for the session's servers and classifiers (serve/compiled.py): the
    first to serve a trained model compiles its programs, the later ones load them, as a
    host's workers do; and none writes to the machine-wide default."""
    previous = os.environ.get("SERVE_COMPILE_CACHE_DIR")
    os.environ["SERVE_COMPILE_CACHE_DIR"] = str(tmp_path_factory.mktemp("compiled"))
    yield
    if previous is None:
        os.environ.pop("SERVE_COMPILE_CACHE_DIR")
    else:
        os.environ["SERVE_COMPILE_CACHE_DIR"] = previous


@dataclass
class TrainingRun:
    """A finished run of container/train: its /opt/ml ``base``, exit ``returncode`` and the
    combined stdout+stderr ``log``."""

    base: Path
    returncode: int
    log: str

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def failure(self) -> str | None:
        path = self.output_dir / "failure"
        return path.read_text() if path.exists() else None


def make_job(base: Path, channels: dict[str, Path], hyperparameters: dict,
             hosts: tuple[str, ...] = ("localhost",), copy: bool = False) -> Path:
    """An /opt/ml tree as SageMaker lays it out (tools.opt_ml.write_job)."""
    from tools.opt_ml import write_job

    return write_job(base, channels, hyperparameters, hosts, copy)


def run_train(base: Path, env: dict | None = None, timeout: float = 600) -> TrainingRun:
    """Run the real ``container/train`` against ``base``; never raises on a failed job."""
    full_env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1",
                    OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, str(TRAIN_ENTRY)], env=full_env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return TrainingRun(base=base, returncode=proc.returncode, log=proc.stdout)


def profiled_steps(trace_path: Path) -> list[int]:
    """The training steps a torch.profiler trace (train.debugger.monitor.TraceWindow) marks
    ``ProfilerStep#N``, sorted."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    return sorted({int(e["name"].split("#")[1]) for e in events
                   if e.get("name", "").startswith("ProfilerStep#")})


def digit_channels(root: Path) -> dict[str, Path]:
    return {name: root / name for name in ("train", "valid", "test")}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's real handwritten digits as 32x32 RGB JPEGs in ImageFolder layout."""
    from tools.datasets import write_digits

    return write_digits(tmp_path_factory.mktemp("digits") / "digits", image_size=32)


def write_untrained_artifact(model_dir: Path, num_classes: int, arch: str = "resnet18",
                             image_size: int = 32) -> Path:
    """A complete artifact (train.export.artifact.write) of a randomly initialised ``arch`` with
    ``num_classes`` classes named ``class 0``...: for serving tests that need a model of a
    given shape, not a trained one. Returns ``model_dir``."""
    import torch

    from train import data, model
    from train.export import artifact

    torch.manual_seed(0)
    net = model.build(arch, num_classes)
    folders = [f"{i + 1:03d}.class_{i}" for i in range(num_classes)]
    artifact.write(model_dir, net, arch, folders, data.Preprocess.for_size(image_size),
                   "untrained", {}, {})
    return model_dir


_UNTRAINED: dict[tuple, Path] = {}


def untrained_artifact(model_dir: Path, num_classes: int, arch: str = "resnet18",
                       image_size: int = 32) -> Path:
    """A copy at ``model_dir`` of the artifact ``write_untrained_artifact`` makes, exported once
    per run for each shape and copied after: for tests that serve a model and do not test the
    writer. Every copy has the same program bytes, so a compiled program is made once per run
    (the session's compile store is keyed by the program's hash). Returns ``model_dir``."""
    import atexit
    import shutil
    import tempfile

    key = (num_classes, arch, image_size)
    if key not in _UNTRAINED:
        folder = Path(tempfile.mkdtemp(prefix="untrained-"))
        atexit.register(shutil.rmtree, folder, True)
        _UNTRAINED[key] = write_untrained_artifact(folder / "model", num_classes, arch,
                                                   image_size)
    shutil.copytree(_UNTRAINED[key], model_dir)
    return model_dir


def full_disk(folder: Path):
    """A context manager that mounts a 1 MiB tmpfs on ``folder`` (an empty folder: a full disk
    for any model or checkpoint) and unmounts it on exit. Skips the test where mounting is not
    allowed (it needs root, as `make test` runs)."""
    import contextlib

    @contextlib.contextmanager
    def mounted():
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)

    return mounted()


@pytest.fixture
def no_containers(tmp_path, monkeypatch) -> Path:
    """A stand-in ``docker`` first on PATH that lists no containers and removes none (its calls
    go to the returned file): for tests of local mode's clean-up that must not touch the
    machine's engine."""
    import stat

    bin_dir = tmp_path / "fake-docker"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory, digits_dir) -> TrainingRun:
    """One real, successful `train` run on digits (the digits recipe); shared by all tests
    that need a trained model, its log or its reports."""
    base = make_job(tmp_path_factory.mktemp("job") / "ml", digit_channels(digits_dir),
                    FAST_HYPERPARAMETERS)
    run = run_train(base)
    assert run.returncode == 0, run.log[-4000:]
    return run


@pytest.fixture(scope="session")
def trained_model_dir(trained_job) -> Path:
    """The model dir (manifest.json + model.pt2) written by the real `train` entry."""
    return trained_job.model_dir


# ------------------------------------------------------------------ a real `serve` process
@dataclass
class Server:
    """A running ``container/serve`` (gunicorn master ``proc``) on loopback ``url``."""

    proc: "subprocess.Popen"
    url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        import psutil

        return {c.pid for c in psutil.Process(self.proc.pid).children()}

    def wait_compiled(self, workers: int = 1, timeout: float = 600) -> None:
        """Wait until ``workers`` workers said they run compiled programs only (a fresh compile
        store is filled by helpers while the workers serve: serve/compiling.py).

        Raises:
            RuntimeError: not within ``timeout`` s, or the server exited.
        """
        import time

        deadline = time.monotonic() + timeout
        while self.log.count("all compiled programs in use") < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{workers} worker(s) not compiled in {timeout} s:\n"
                                   f"{self.log[-3000:]}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log_path: Path, env: dict | None = None,
                 wait_ready: float = 120, root: Path = ROOT) -> Server:
    """Start the real serve entry of the checkout at ``root`` (this one by default; a
    benchmark may start another's) on a free loopback port; wait for /ping 200 unless
    ``wait_ready`` is 0."""
    import time
    import urllib.request

    port = free_port()
    full_env = dict(os.environ, SM_MODEL_DIR=str(model_dir), SAGEMAKER_BIND_TO_PORT=str(port),
                    SAGEMAKER_MODEL_SERVER_WORKERS="1", PYTHONUNBUFFERED="1",
                    PYTHONPATH=str(root))
    full_env.update(env or {})
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(root / "container" / "serve")], env=full_env,
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + wait_ready
    while wait_ready and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{server.log[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    if wait_ready:
        server.stop()
        raise RuntimeError(f"serve not ready in {wait_ready} s:\n{server.log[-3000:]}")
    return server


@pytest.fixture(scope="session")
def server(trained_model_dir, tmp_path_factory):
    """serve, with the model `train` made, ready on loopback for the whole session."""
    s = start_server(trained_model_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    yield s
    s.stop()
