"""The app in-process (Flask's test client): what a worker does once the model is loaded."""

from __future__ import annotations

import gc
import time

import pytest
import torch

from serve.app import create_app
from serve.config import Settings
from tests.conftest import DOG_PHOTOS, untrained_artifact

pytestmark = pytest.mark.model


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    """What these tests check does not depend on compiling, which would take a minute of a
    slow machine's two cores for an artifact of their own (tests/serve/test_compiled.py and
    the server tests compile)."""
    monkeypatch.setenv("SERVE_COMPILE", "off")


@pytest.fixture(autouse=True)
def _unfreeze():
    """A loaded worker freezes its objects (gc.freeze); unfrozen after each test, so that none
    stays frozen at exit (nanobind would report each as a leak)."""
    yield
    gc.unfreeze()


def _ready_client(app):
    client = app.test_client()
    deadline = time.monotonic() + 60
    while client.get("/ping").status_code != 200:
        assert time.monotonic() < deadline, app.extensions["model"].error
        time.sleep(0.1)
    return client


def test_default_top_k_is_clamped_to_the_classes_and_an_explicit_k_is_not(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("SM_MODEL_DIR", str(untrained_artifact(tmp_path / "m", 2)))
    client = _ready_client(create_app(Settings.from_env(), torch.device("cpu")))
    photo = DOG_PHOTOS[0].read_bytes()
    response = client.post("/invocations", data=photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    top = response.json["predictions"][0]["top_k"]
    assert sorted(t["label"] for t in top) == ["class 0", "class 1"]
    response = client.post("/invocations?k=5", data=photo, content_type="image/jpeg")
    assert response.status_code == 400
    assert response.json["reason"] == "k=5 must be between 1 and 2"


def test_loaded_model_is_frozen_out_of_the_garbage_collector(trained_model_dir, monkeypatch):
    # A full collection over the loaded program took ~170 ms: one request in ~60 paid it
    # (p99 210 ms against p50 55 ms, resnet50 on 2 vCPUs) until the worker froze its objects.
    monkeypatch.setenv("SM_MODEL_DIR", str(trained_model_dir))
    gc.unfreeze()
    app = create_app(Settings.from_env(), torch.device("cpu"))
    client = app.test_client()
    try:
        deadline = time.monotonic() + 60
        while client.get("/ping").status_code != 200:
            assert time.monotonic() < deadline, app.extensions["model"].error
            time.sleep(0.1)
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())
    finally:
        gc.unfreeze()
