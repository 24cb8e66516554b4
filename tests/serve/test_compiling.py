"""A fresh host serves at once (serve/compiling.py): the worker answers from its eager program
while compile helpers build the compiled ones, each size takes over between batches, a failed
compile keeps the eager program serving and is tried again, and a package that does not load is
rebuilt. The worker is serve's own ModelHolder in this process; the helpers are real processes
running AOTInductor and the C++ compiler.
"""

from __future__ import annotations

import gc
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from serve import compiled, lifecycle
from serve.config import Settings
from serve.model import Classifier
from serve.precision import Choice

pytestmark = pytest.mark.model


def _holder(model_dir: Path, store: Path, **env) -> lifecycle.ModelHolder:
    settings = Settings.from_env({"SM_MODEL_DIR": str(model_dir), "SERVE_METRICS": "off",
                                  "SERVE_COMPILE": "on", "SERVE_COMPILE_CACHE_DIR": str(store),
                                  **env}, gpus=0)
    holder = lifecycle.ModelHolder(settings, torch.device("cpu")).start()
    assert holder.wait_ready(time.monotonic() + 120), holder.error
    return holder


def _close(holder: lifecycle.ModelHolder) -> None:
    if holder.watcher is not None:
        holder.watcher.close()
    if holder.scheduler is not None:
        holder.scheduler.close()
    gc.unfreeze()


def _compile_in_a_helper(model_dir: Path, store: Path, sizes: list[int]) -> compiled.Entry:
    """fp32 packages of ``sizes`` built by a compile helper process (its command line), as a
    worker's watcher starts it; returns their entry."""
    import subprocess
    import sys

    from contract.artifact import read_manifest
    from serve.precision import Host
    from tests.conftest import ROOT

    manifest = read_manifest(model_dir)
    key = compiled.key(manifest["program_sha256"], "fp32",
                       compiled.host_id(torch.device("cpu"), Host.detect("cpu").cpu_flags))
    done = subprocess.run([sys.executable, "-m", "serve.compile_helper", "--program",
                           str(model_dir / manifest["program"]), "--sha256",
                           manifest["program_sha256"], "--precision", "fp32", "--crop",
                           str(manifest["preprocess"]["crop"]), "--sizes",
                           ",".join(map(str, sizes)), "--store", str(store), "--key", key],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return compiled.Entry(store, key)


def _images(classifier: Classifier, n: int) -> np.ndarray:
    crop = classifier.geometry.crop
    return np.random.default_rng(0).integers(0, 256, (n, crop, crop, 3), dtype=np.uint8)


def _fp32_top1(model_dir: Path, images: np.ndarray) -> np.ndarray:
    reference = Classifier(model_dir, torch.device("cpu"), Choice("fp32", False, "reference"))
    return reference.forward(images).argmax(1)


def test_a_fresh_host_answers_uncompiled_at_once_and_each_compiled_size_takes_over(
        trained_model_dir, tmp_path):
    """int8 is the target (forced): the worker answers from an eager program that is not int8,
    and requests sent all along are each answered once, right, while sizes 1 and 2 compile
    in a helper and take over."""
    holder = _holder(trained_model_dir, tmp_path / "store", SERVE_PRECISION="int8",
                     SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="2")
    try:
        classifier, scheduler = holder.classifier, holder.scheduler
        state = classifier.describe()
        assert state["precision"] == "int8" and state["eager_precision"] in ("fp32", "bf16")
        assert state["compiling_batch_sizes"] == [1, 2] and state["compiled_batch_sizes"] == []
        assert classifier.eager_precision != "int8"
        images = _images(classifier, 24)
        want = _fp32_top1(trained_model_dir, images)
        answers, errors, stop = [], [], threading.Event()

        def client(offset: int):
            i = offset
            while not stop.is_set():
                deadline = time.monotonic() + 60
                scheduler.admit(1, deadline)
                job = scheduler.submit(images[i % 24][None], deadline)
                try:
                    answers.append((i % 24, scheduler.wait(job).argmax(1)[0]))
                except Exception as exc:  # noqa: BLE001 - counted, the test fails on it
                    errors.append(exc)
                i += 2

        clients = [threading.Thread(target=client, args=(k,)) for k in range(2)]
        for c in clients:
            c.start()
        try:
            assert holder.watcher.join(300), "the compile did not finish in 300 s"
            time.sleep(0.5)  # requests on the compiled programs too
        finally:
            stop.set()
            for c in clients:
                c.join(60)
        assert not errors, errors[:3]
        assert len(answers) > 20
        agree = np.mean([want[i] == top1 for i, top1 in answers])
        assert agree >= 0.95, agree  # eager bf16/fp32 and compiled int8 against fp32
        state = classifier.describe()
        assert state == {"precision": "int8", "compiled_batch_sizes": [1, 2]}, state
        assert scheduler.stats()["admitted"] == 0  # every request answered once, none left
        entry = classifier.entry
        assert entry.ready([1, 2]) == [1, 2] and entry.failure() is None
        assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    finally:
        _close(holder)


@pytest.fixture(scope="module")
def helper_built(trained_model_dir, tmp_path_factory) -> compiled.Entry:
    """The trained model's fp32 package of batch size 1, built by a compile helper process (its
    command line, as a worker's watcher starts it)."""
    return _compile_in_a_helper(trained_model_dir, tmp_path_factory.mktemp("built"), [1])


def test_a_package_that_does_not_load_is_removed_and_a_failed_rebuild_is_retried(
        trained_model_dir, helper_built, tmp_path, monkeypatch, caplog):
    """The store's package is corrupt: the worker removes it and serves fp32 eagerly while it is
    compiled again. That compile fails once (its helper is killed, as the kernel's OOM killer
    would): the worker says so once and counts it, and the retry after the back-off takes
    over."""
    import shutil

    store = compiled.open_store(tmp_path / "store")
    shutil.copytree(helper_built.package(1), store / helper_built.key / "b1")
    for library in (store / helper_built.key / "b1").rglob("*.so"):
        library.write_bytes(b"not a shared library")
    failures = []
    monkeypatch.setattr(lifecycle.ModelHolder, "_compile_failed",
                        lambda self, reason: failures.append(reason))
    with caplog.at_level("INFO", logger="serve"):
        holder = _holder(trained_model_dir, store, SERVE_PRECISION="fp32",
                         SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="1", SERVE_COMPILE_RETRY_S="1")
        try:
            classifier = holder.classifier
            assert classifier.describe()["compiling_batch_sizes"] == [1]
            images = _images(classifier, 4)
            deadline = time.monotonic() + 60
            while not holder.watcher.helpers:
                assert time.monotonic() < deadline, "no helper started"
                time.sleep(0.05)
            holder.watcher.helpers[0].kill()
            while not failures:
                assert time.monotonic() < deadline, "no failure seen"
                assert classifier.forward(images[:1]).shape == (1, len(classifier.classes))
                time.sleep(0.2)
            assert classifier.describe()["compiled_batch_sizes"] == []
            assert holder.watcher.join(300), "the retry did not finish in 300 s"
        finally:
            _close(holder)
    messages = [r.getMessage() for r in caplog.records]
    assert any("batch size 1" in m and "does not load" in m and "removed" in m
               for m in messages), messages
    said = [m for m in messages if "compile failed" in m]
    assert len(said) == 1 and "killed by signal 9" in said[0], said
    assert "serving fp32 uncompiled for batch sizes [1]" in said[0], said
    assert len(failures) == 1, failures
    assert any("compiling batch sizes [1] again (after 1 failed attempt)" in m for m in messages)
    assert classifier.describe()["compiled_batch_sizes"] == [1]
    assert classifier.entry.failure() is None
    assert all(lib.read_bytes()[:4] == b"\x7fELF"
               for lib in classifier.entry.package(1).rglob("*.so"))
    assert (classifier.forward(images).argmax(1) == _fp32_top1(trained_model_dir, images)).all()


def test_the_compile_step_ships_packages_that_a_fresh_host_serves_with_nothing_compiled(
        trained_model_dir, helper_built, tmp_path):
    """`compile` (a Processing job's entry) on a model.tar.gz writes a new one that carries this
    host's packages (here from the host's store, which a helper filled: nothing is compiled
    twice); a worker on an empty store copies them and starts compiled, with no helper."""
    import json
    import subprocess
    import sys
    import tarfile

    from tests.conftest import ROOT

    archive = tmp_path / "in" / "model.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for item in trained_model_dir.iterdir():
            tar.add(item, arcname=item.name)
    env = dict(os.environ, SERVE_PRECISION="fp32", SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="1",
               PYTHONPATH=str(ROOT), SERVE_COMPILE_CACHE_DIR=str(helper_built.store))
    done = subprocess.run([sys.executable, str(ROOT / "container" / "compile"), "--input",
                           str(archive.parent), "--output", str(tmp_path / "out")], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("compile: fp32 batch sizes [1] for "), done.stdout
    model_dir = tmp_path / "model"
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        tar.extractall(model_dir, filter="data")
    (shipped,) = (model_dir / compiled.SHIPPED).iterdir()
    about = json.loads((shipped / "about.json").read_text())
    assert about["precision"] == "fp32" and about["batch_sizes"] == [1]
    assert sorted(p.name for p in shipped.iterdir()) == ["about.json", "b1"]
    assert (model_dir / "manifest.json").read_bytes() == (
        trained_model_dir / "manifest.json").read_bytes()
    holder = _holder(model_dir, tmp_path / "fresh-store", SERVE_PRECISION="fp32",
                     SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="1")
    try:
        assert holder.watcher is None
        assert holder.classifier.describe() == {"precision": "fp32",
                                                "compiled_batch_sizes": [1]}
        assert holder.classifier.entry.key == shipped.name == helper_built.key
    finally:
        _close(holder)
    refused = subprocess.run([sys.executable, str(ROOT / "container" / "compile"), "--input",
                              str(model_dir)], env={**env, "SERVE_COMPILE": "off"}, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.startswith("compile: the server would not compile on this host")
