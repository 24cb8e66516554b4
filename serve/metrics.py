"""CloudWatch metrics from the container: the endpoint's invocations, errors, latency and its
parts, batching, the queue's depth, decode failures, failed compiles, model confidence and drift
scores, as Embedded Metric Format
(EMF) lines on stdout.

An endpoint's stdout goes to CloudWatch Logs, and CloudWatch turns EMF lines there into metrics
with no agent and no sidecar ("Embedding metrics within logs", CloudWatch User Guide). Each
worker aggregates its requests over ``interval_s`` (SERVE_METRICS_INTERVAL_S, 60) and writes a
few documents per interval, serialised by AWS's aws-embedded-metrics library, never one per
request. Dimensions: EndpointName and VariantName (SERVE_ENDPOINT_NAME, SERVE_VARIANT_NAME:
deploy.py sets them; SageMaker does not tell a container its endpoint's name) and ModelVersion.

Latency percentiles (p50, p90, p99) are the worker's over the interval: with several workers
or instances, alarm on their Maximum.

GET /metrics (serve/prometheus.py) carries requests and latencies too, as counters and
histograms for SageMaker's detailed observability; these lines stay for deploy.py monitor's
alarms and dashboard, which read them, and alone carry confidence, drift and failures by kind
(docs/serving.md, "Monitoring the endpoint", says which switch does what).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from typing import Callable

import numpy as np

from serve.settings_table import METRICS_NAMESPACE
from serve.drift import PSI_ALERT, DriftWindow

logger = logging.getLogger("serve")

PARTS = ("latency_ms", "decode_ms", "queue_ms", "compute_ms")
PART_NAMES = {"latency_ms": "Latency", "decode_ms": "DecodeTime", "queue_ms": "QueueWait",
              "compute_ms": "ForwardTime"}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p90, p99 = np.percentile(np.asarray(values, float), [50, 90, 99])
    return {"P50": float(p50), "P90": float(p90), "P99": float(p99)}


class EndpointMetrics:
    """One worker's metrics: ``record`` per request (thread-safe), a daemon thread that writes
    the interval's EMF documents with ``write`` (stdout by default) and drift scores from
    ``window``; ``flush`` writes what is pending now."""

    def __init__(self, endpoint: str, variant: str, model_version: str, interval_s: float,
                 window: DriftWindow | None = None, namespace: str = METRICS_NAMESPACE,
                 write: Callable[[str], None] | None = None):
        self.dimensions = {"EndpointName": endpoint, "VariantName": variant,
                           "ModelVersion": model_version}
        self.interval_s, self.window, self.namespace = interval_s, window, namespace
        self.write = write or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        self._lock = threading.Lock()
        self._reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def _reset(self) -> None:
        self._statuses: Counter = Counter()
        self._parts: dict[str, list[float]] = {part: [] for part in PARTS}
        self._batch_sizes: list[int] = []
        self._images: list[int] = []
        self._confidences: list[float] = []
        self._decode_failures: Counter = Counter()
        self._compile_failures = 0
        self._queue_depth = -1  # the most jobs a worker's queue held this interval; -1: none seen

    def record(self, status: int, fields: dict, confidences: list[float] = (),
               decode_failure: str | None = None) -> None:
        """One request: its HTTP ``status``, the access log's ``fields`` (latency_ms and, when it
        ran, images, batch_size, decode_ms, queue_ms, compute_ms), its images' top-1
        probabilities, and the kind of decode failure that ended it (serve.errors.BadImage)."""
        with self._lock:
            self._statuses[status] += 1
            for part in PARTS:
                if part in fields:
                    self._parts[part].append(float(fields[part]))
            if "batch_size" in fields:
                self._batch_sizes.append(int(fields["batch_size"]))
            if fields.get("images"):
                self._images.append(int(fields["images"]))
            self._confidences.extend(float(c) for c in confidences)
            if decode_failure:
                self._decode_failures[decode_failure] += 1

    def queue_changed(self, depth: int) -> None:
        """The worker's queue now holds ``depth`` jobs (serve/scheduler.py); the interval's
        largest is the QueueDepthMax metric, to alarm on before the queue's bound answers
        503s."""
        with self._lock:
            self._queue_depth = max(self._queue_depth, depth)

    def compile_failed(self) -> None:
        """A compile of the worker's programs failed (it serves uncompiled meanwhile): counted
        in the CompileFailures metric, to alarm on."""
        with self._lock:
            self._compile_failures += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - metrics must never take the worker down
                logger.exception("metrics not written")

    def close(self) -> None:
        """Stop the thread and write what is pending."""
        self._stop.set()
        self.flush()

    def flush(self) -> None:
        """Write the pending interval's documents (nothing when no request came and no drift
        score is due)."""
        with self._lock:
            statuses, parts = self._statuses, self._parts
            batches, images = self._batch_sizes, self._images
            confidences, failures = self._confidences, self._decode_failures
            compile_failures, queue_depth = self._compile_failures, self._queue_depth
            self._reset()
        metrics: list[tuple[str, float, str]] = []
        if statuses:
            total = sum(statuses.values())
            client = sum(n for s, n in statuses.items() if 400 <= s < 500)
            server = sum(n for s, n in statuses.items() if s >= 500)
            metrics += [("Invocations", total, "Count"), ("Invocation4XXErrors", client, "Count"),
                        ("Invocation5XXErrors", server, "Count")]
            for part, values in parts.items():
                for suffix, value in _percentiles(values).items():
                    metrics.append((f"{PART_NAMES[part]}{suffix}", value, "Milliseconds"))
            if batches:
                metrics += [("BatchSizeMean", float(np.mean(batches)), "Count"),
                            ("BatchSizeMax", float(max(batches)), "Count")]
            if images:
                metrics.append(("ImagesPerRequestMean", float(np.mean(images)), "Count"))
                metrics.append(("Images", float(sum(images)), "Count"))
            if confidences:
                metrics += [("ConfidenceMean", float(np.mean(confidences)), "None"),
                            ("ConfidenceP10", float(np.percentile(confidences, 10)), "None")]
            for kind, n in failures.items():
                metrics.append((f"DecodeFailures_{kind}", n, "Count"))
        if compile_failures:
            metrics.append(("CompileFailures", compile_failures, "Count"))
        if queue_depth >= 0:
            metrics.append(("QueueDepthMax", float(queue_depth), "Count"))
        drift = self.window.scores() if self.window is not None else {}
        metrics += [(name, value, "None") for name, value in drift.items()]
        for name, value in drift.items():
            if name.startswith("DriftPSI") and value > PSI_ALERT:
                logger.warning("drift: %s = %.3f over %g against the training baseline (last %d "
                               "images)", name, value, PSI_ALERT, self.window.size)
        if metrics:
            self._emit(metrics)
        for status, n in sorted(statuses.items()):
            self._emit([("Requests", n, "Count")], {"Status": str(status)})

    def _emit(self, metrics: list[tuple[str, float, str]], extra: dict | None = None) -> None:
        from aws_embedded_metrics.logger.metrics_context import MetricsContext
        from aws_embedded_metrics.serializers.log_serializer import LogSerializer

        context = MetricsContext.empty()
        context.namespace = self.namespace
        context.set_dimensions([{**self.dimensions, **(extra or {})}], use_default=False)
        for name, value, unit in metrics:
            context.put_metric(name, value, unit)
        context.meta["Timestamp"] = int(time.time() * 1000)
        for line in LogSerializer.serialize(context):
            self.write(line)
