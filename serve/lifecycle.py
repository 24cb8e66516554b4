"""One worker's model: loaded on a background thread after the fork, warmed up, then served
through its scheduler.

The worker accepts connections at once; /ping says 503 ("loading") until the model is loaded and
warmed up at batch 1 and at the max batch size. Invocations that arrive meanwhile (a worker that
was just restarted takes its share of connections) wait for it within their deadline instead of
failing.

The artifact is validated once, before anything of it runs (contract/artifact.py: every
manifest field and the program's sha256; serve/model.py: its output width). An artifact that
is not there yet (no manifest.json) is looked for every ``RETRY_LOAD_S``; one that is there
and wrong fails the load with one line naming the field, reported by /ping and the invocations,
and is not loaded again until its files change. On a host whose compile store lacks the
compiled programs (a fresh host), the worker serves the eager program at once while helper
processes compile them, and each compiled batch size takes over as it is ready
(serve/compiling.py); a failed compile keeps the eager program serving and is tried again
later. A model thread that dies, or a device that fails even blank images (serve/scheduler.py), ends the
worker: /ping stops answering 200 and gunicorn starts a fresh worker.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

import torch

from serve import precision
from serve.config import Settings
from serve.cpu_turns import CpuTurns
from serve.drift import DriftWindow, load_baseline
from serve.metrics import EndpointMetrics
from serve.prometheus import PrometheusMetrics
from contract.artifact import ArtifactError, ArtifactMissing, read_manifest
from serve.compiled import CompileUnavailable
from serve.compiling import Watcher
from serve.model import Classifier
from serve.scheduler import Scheduler
from serve.threads import name_this_thread

logger = logging.getLogger("serve")

RETRY_LOAD_S = 2.0
# Objects still frozen at exit are never collected, and nanobind (triton's bindings, which torch
# imports) then prints each of its own as a leak; the worker unfreezes them as it exits.
atexit.register(gc.unfreeze)
_holders: list["ModelHolder"] = []  # this worker's, for close_all() at its exit


def choose_precision(settings: Settings, device: torch.device, manifest: dict | None = None,
                     compile_mode: str | None = None) -> precision.Choice:
    """The precision and mode a worker on ``device`` runs the artifact in ``settings.model_dir``
    (serve/precision.py), from its manifest's record (``manifest``, read when None) and this
    host. A ``precisions`` record that is not an object counts as none (fp32).
    ``compile_mode`` "off" asks for the best uncompiled choice (what serves while compiling).

    Raises:
        ArtifactError: the manifest is missing or invalid.
    """
    manifest = manifest if manifest is not None else read_manifest(settings.model_dir)
    record = manifest.get("precisions")
    if record is not None and not isinstance(record, dict):
        logger.warning("manifest.json: field 'precisions' is not an object; serving fp32")
        record = None
    record = precision.present(record, settings.model_dir)
    host = precision.Host.detect(device.type, device.index or 0)
    return precision.choose(record, host, settings.precision, compile_mode or settings.compile,
                            settings.precision_tolerance_points)


def close_all() -> None:
    """Write every holder's pending metrics (gunicorn's worker_exit calls this)."""
    for holder in _holders:
        holder.close()


class ModelHolder:
    """Loads the classifier and starts its scheduler; says whether they are ready and healthy.

    ``on_fatal`` is called once when a loaded model stops for good (default: the worker sends
    itself SIGTERM, gunicorn's graceful stop, and the master starts a new worker);
    ``prometheus`` hears the load, the program that runs and the scheduler's queue depth."""

    def __init__(self, settings: Settings, device: torch.device, on_fatal=None,
                 prometheus: PrometheusMetrics | None = None):
        self.settings, self.device, self.prometheus = settings, device, prometheus
        self.classifier: Classifier | None = None
        self.scheduler: Scheduler | None = None
        self.metrics: EndpointMetrics | None = None
        # One per worker, kept across model loads: the decodes' and forwards' turns on a CPU.
        self.turns = CpuTurns(settings.max_batch_delay_ms / 1000.0) \
            if settings.cpu_turns and device.type == "cpu" else None
        self.drift: DriftWindow | None = None
        self.watcher: Watcher | None = None  # while compiled programs are being built
        self.error: str | None = None
        self.failed = False  # the artifact is there and cannot be served: no retry
        self.ready = threading.Event()
        self._on_fatal = on_fatal or _stop_this_worker
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> "ModelHolder":
        _holders.append(self)
        self._thread.start()
        return self

    def close(self) -> None:
        """Write the pending metrics."""
        if self.metrics is not None:
            self.metrics.close()

    def healthy(self) -> bool:
        """Whether the model is loaded and its scheduler's thread is serving."""
        return self.ready.is_set() and self.scheduler is not None and self.scheduler.healthy

    def status(self) -> str | None:
        """Why the worker cannot serve now (for /ping and invocations), or None when it can."""
        if self.healthy():
            return None
        if self.scheduler is not None and self.scheduler.failure is not None:
            return self.scheduler.failure
        return self.error or "the model is loading"

    def wait_ready(self, deadline: float) -> bool:
        """Wait (until ``deadline``, time.monotonic()) while the model loads without error (a
        missing or broken artifact answers at once); True once it is ready."""
        while not self.ready.is_set() and self.error is None:
            left = deadline - time.monotonic()
            if left <= 0 or self.ready.wait(min(left, 0.2)):
                break
        return self.ready.is_set()

    def _load(self) -> None:
        name_this_thread("serve-load")
        last, seen = None, None
        while True:
            signature = _artifact_signature(Path(self.settings.model_dir))
            if not self.failed or signature != seen:
                seen = signature
                try:
                    self._load_once()
                    return
                except ArtifactMissing as exc:  # not there yet: keep /ping at 503 and look again
                    self.error, self.failed = str(exc), False
                except Exception as exc:  # noqa: BLE001 - a broken artifact must not kill the worker
                    self.error = (str(exc) if isinstance(exc, ArtifactError)
                                  else f"{type(exc).__name__}: {exc}")
                    self.failed = True
                if self.error != last:
                    if self.failed:
                        logger.error("model not loaded: %s (loaded again when the model dir "
                                     "changes)", self.error)
                    else:
                        logger.error("model not loaded: %s (looking again every %.0f s)",
                                     self.error, RETRY_LOAD_S)
                    last = self.error
            time.sleep(RETRY_LOAD_S)

    def _load_once(self) -> None:
        """Validate, load, warm up and start the model, or raise leaving nothing running."""
        s = self.settings
        start = time.perf_counter()
        manifest = read_manifest(s.model_dir)
        max_batch = manifest["input"]["max_batch"]
        if s.max_batch_size > max_batch:
            raise ArtifactError(f"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE={s.max_batch_size} is "
                                f"over this artifact's max batch ({max_batch}, manifest.json "
                                f"field 'input.max_batch')")
        choice = choose_precision(s, self.device, manifest)
        logger.info("precision %s", choice.reason)
        eager = choose_precision(s, self.device, manifest, compile_mode="off") \
            if choice.compile else choice
        classifier = Classifier(s.model_dir, self.device, choice, manifest, eager.precision)
        try:
            missing = classifier.warm_up(s.max_batch_size, Path(s.compile_cache_dir))
        except CompileUnavailable as exc:  # the store is refused: one line, then eager
            logger.warning("no compiled program (%s); serving %s uncompiled", exc,
                           classifier.eager_precision)
            classifier.use_eager(str(exc))
            missing = classifier.warm_up(s.max_batch_size)
        ms_per_image = classifier.plan.ms(classifier.plan.max_batch) / classifier.plan.max_batch
        crop = classifier.geometry.crop
        # The scheduler forms no batch larger than the largest one worth forming (within a
        # margin of the cheapest cost per image, as the warm-up timed them: serve/buckets.py).
        forward = self.turns.forward(classifier.forward) if self.turns else classifier.forward
        scheduler = Scheduler(forward, classifier.plan.max_batch,
                              s.max_batch_delay_ms / 1000.0, s.max_queue, ms_per_image,
                              probe=np.zeros((1, crop, crop, 3), np.uint8),
                              on_fatal=self._on_fatal,
                              launch=classifier.launch if classifier.cuda else None)
        # The loaded program is hundreds of thousands of long-lived Python objects (the
        # exported graph). Left to the cyclic GC, each full collection walks them all,
        # inside some request's latency. gc.freeze() moves everything alive now out of
        # the collector's sight (Python docs, gc.freeze).
        gc.collect()
        gc.freeze()
        self._start_metrics(classifier)
        self.classifier, self.scheduler, self.error, self.failed = classifier, scheduler, None, False
        if missing:
            self.watcher = Watcher(classifier, scheduler, missing, s.compile_processes,
                                   s.compile_retry_s, on_failure=self._compile_failed,
                                   on_complete=lambda: self._compiled(start)).start()
        loaded_s = time.perf_counter() - start
        hearers = [m.queue_changed for m in (self.prometheus, self.metrics) if m is not None]
        if hearers:
            def on_queue(depth: int) -> None:
                for hear in hearers:
                    hear(depth)

            scheduler.on_queue = on_queue
        if self.prometheus is not None:
            self.prometheus.model_loaded(loaded_s)
            self.prometheus.model_changed(classifier.version, classifier.describe())
            if classifier.choice.compile and not missing:
                self.prometheus.compiled(loaded_s)
        self.ready.set()
        logger.info("model %s loaded on %s in %.0f ms (%.1f ms per image at batch %d)",
                    classifier.version, self.device, loaded_s * 1000,
                    ms_per_image, classifier.plan.max_batch)
        if classifier.choice.compile and not missing:
            _log_compiled(classifier)
        self._warn_if_partial(classifier)

    def _compiled(self, load_started: float) -> None:
        """Every compiled program is in use (the watcher's thread): the log line, the metrics."""
        _log_compiled(self.classifier)
        if self.prometheus is not None:
            self.prometheus.compiled(time.perf_counter() - load_started)
            self.prometheus.model_changed(self.classifier.version, self.classifier.describe())

    def _compile_failed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.compile_failed()

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


def _log_compiled(classifier: Classifier) -> None:
    """The line that says a worker runs compiled programs only (tests and benchmarks wait for
    it)."""
    logger.info("all compiled programs in use (%s, batch sizes %s)", classifier.choice.precision,
                sorted(classifier.compiled))


def _artifact_signature(model_dir: Path) -> tuple:
    """What changes when a model dir's files are replaced: each file's name, size, mtime and
    inode (cheap: no file is read)."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns, st.st_ino)
                            for p in model_dir.iterdir() if p.is_file()
                            for st in (p.stat(),)))
    except OSError:
        return ()


def _stop_this_worker(reason: str) -> None:
    """End this gunicorn worker gracefully (SIGTERM: requests in flight are answered, then it
    exits and the master starts a new one)."""
    from serve.worker import stopping_on_its_own

    logger.error("worker %d exits so that gunicorn replaces it: %s", os.getpid(), reason)
    stopping_on_its_own()  # the queued connections are the siblings' (serve/worker.py)
    os.kill(os.getpid(), signal.SIGTERM)
