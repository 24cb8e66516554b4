"""serve's app with one fault injected, for tests that run it under the real gunicorn
(``gunicorn --config python:serve.gunicorn_conf 'tests.serve.faulty_app:create_app()'``).

``SERVE_TEST_FAULT`` names the fault; it strikes while the file ``SERVE_TEST_FAULT_FLAG`` exists
(so a test turns it on after the worker is healthy, and off before its replacement starts):
- ``model-thread``: the scheduler's own code raises on the model thread (it dies);
- ``device``: every forward raises what a broken CUDA context raises, blank images included.
"""

from __future__ import annotations

import os

from serve import model, scheduler
from serve.app import create_app as _create_app


def _armed() -> bool:
    return os.path.exists(os.environ["SERVE_TEST_FAULT_FLAG"])


def create_app():
    fault = os.environ["SERVE_TEST_FAULT"]
    if fault == "model-thread":
        take = scheduler.Scheduler._take_batch

        def take_batch(self):
            batch = take(self)
            if batch and _armed():
                raise MemoryError("injected: the model thread's own code failed")
            return batch

        scheduler.Scheduler._take_batch = take_batch
    elif fault == "device":
        forward = model.Classifier.forward

        def broken_forward(self, images):
            if _armed():
                raise RuntimeError("CUDA error: an illegal memory access was encountered "
                                   "(injected)")
            return forward(self, images)

        model.Classifier.forward = broken_forward
    else:
        raise ValueError(f"SERVE_TEST_FAULT={fault!r}")
    return _create_app()
