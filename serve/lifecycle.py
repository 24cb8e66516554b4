"""One worker's model: loaded on a background thread after the fork, warmed up, then served
through its scheduler.

The worker accepts connections at once; /ping says 503 ("loading") until the model is loaded and
warmed up at batch 1 and at the max batch size. Invocations that arrive meanwhile (a worker that
was just restarted takes its share of connections) wait for it within their deadline instead of
failing. An artifact that is not there yet, or broken, is retried every ``RETRY_LOAD_S`` and
reported by /ping and the invocations at once.
"""

from __future__ import annotations

import atexit
import gc
import logging
import threading
import time

import torch

from serve.config import Settings
from serve import precision
from serve.drift import DriftWindow, load_baseline
from serve.metrics import EndpointMetrics
from serve.model import ArtifactError, Classifier, read_manifest
from serve.scheduler import Scheduler

logger = logging.getLogger("serve")

RETRY_LOAD_S = 2.0
# Objects still frozen at exit are never collected, and nanobind (triton's bindings, which torch
# imports) then prints each of its own as a leak; the worker unfreezes them as it exits.
atexit.register(gc.unfreeze)
_holders: list["ModelHolder"] = []  # this worker's, for close_all() at its exit


def choose_precision(settings: Settings, device: torch.device) -> precision.Choice:
    """The precision and mode a worker on ``device`` runs the artifact in ``settings.model_dir``
    (serve/precision.py), from its manifest's record and this host.

    Raises:
        ArtifactError: the manifest is missing or unreadable.
    """
    record = precision.present(read_manifest(settings.model_dir).get("precisions"),
                               settings.model_dir)
    host = precision.Host.detect(device.type, device.index or 0)
    return precision.choose(record, host, settings.precision, settings.compile,
                            settings.precision_tolerance_points)


def close_all() -> None:
    """Write every holder's pending metrics (gunicorn's worker_exit calls this)."""
    for holder in _holders:
        holder.close()


class ModelHolder:
    """Loads the classifier and starts its scheduler; says whether they are ready."""

    def __init__(self, settings: Settings, device: torch.device):
        self.settings, self.device = settings, device
        self.classifier: Classifier | None = None
        self.scheduler: Scheduler | None = None
        self.metrics: EndpointMetrics | None = None
        self.drift: DriftWindow | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> "ModelHolder":
        _holders.append(self)
        self._thread.start()
        return self

    def close(self) -> None:
        """Write the pending metrics."""
        if self.metrics is not None:
            self.metrics.close()

    def wait_ready(self, deadline: float) -> bool:
        """Wait (until ``deadline``, time.monotonic()) while the model loads without error; True
        once it is ready."""
        while not self.ready.is_set() and self.error is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.ready.wait(min(left, 0.2)):
                break
        return self.ready.is_set()

    def _load(self) -> None:
        last = None
        s = self.settings
        while True:
            try:
                start = time.perf_counter()
                choice = choose_precision(s, self.device)
                logger.info("precision %s", choice.reason)
                classifier = Classifier(s.model_dir, self.device, choice)
                ms_per_image = classifier.warm_up(s.max_batch_size)
                scheduler = Scheduler(classifier.forward, s.max_batch_size,
                                      s.max_batch_delay_ms / 1000.0, s.max_queue, ms_per_image)
                # The loaded program is hundreds of thousands of long-lived Python objects (the
                # exported graph). Left to the cyclic GC, each full collection walks them all,
                # inside some request's latency. gc.freeze() moves everything alive now out of
                # the collector's sight (Python docs, gc.freeze).
                gc.collect()
                gc.freeze()
                self._start_metrics(classifier)
                self.classifier, self.scheduler, self.error = classifier, scheduler, None
                self.ready.set()
                logger.info("model %s loaded on %s in %.0f ms (%.1f ms per image at batch %d)",
                            classifier.version, self.device,
                            (time.perf_counter() - start) * 1000, ms_per_image, s.max_batch_size)
                self._warn_if_partial(classifier)
                return
            except ArtifactError as exc:  # not there yet: keep /ping at 503 and retry
                self.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a broken artifact must not kill the worker
                self.error = f"{type(exc).__name__}: {exc}"
            if self.error != last:
                logger.error("model not loaded: %s (retrying every %.0f s)", self.error,
                             RETRY_LOAD_S)
                last = self.error
            time.sleep(RETRY_LOAD_S)

    def _start_metrics(self, classifier: Classifier) -> None:
        s = self.settings
        baseline = load_baseline(classifier.manifest)
        if baseline is None:
            logger.warning("model %s has no drift baseline: no drift scores",
                           classifier.version)
        else:
            self.drift = DriftWindow(baseline, size=s.drift_window,
                                     min_images=min(100, s.drift_window))
        if s.metrics:
            self.metrics = EndpointMetrics(s.endpoint_name, s.variant_name, classifier.version,
                                           s.metrics_interval_s, self.drift, s.metrics_namespace)

    @staticmethod
    def _warn_if_partial(classifier: Classifier) -> None:
        training = classifier.manifest.get("training") or {}
        if training.get("complete") is False:
            logger.warning("model %s is partial: its training job was stopped by %s after %s "
                           "of %s epochs; the weights are from %s", classifier.version,
                           training.get("stopped_by"), training.get("epochs_completed"),
                           training.get("epochs"), training.get("weights_from"))
