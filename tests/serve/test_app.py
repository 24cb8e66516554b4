"""The app in-process (Flask's test client): what a worker does once the model is loaded."""

from __future__ import annotations

import gc
import time

import pytest
import torch

from serve.app import create_app
from serve.config import Settings

pytestmark = pytest.mark.slow


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
