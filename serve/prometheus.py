"""``GET /metrics``: the server's metrics in Prometheus' text format, for SageMaker's detailed
observability.

An endpoint config with ``MetricsConfig.EnableDetailedObservability`` (on by default for new
configs) has SageMaker scrape a bring-your-own container's ``/metrics`` on port 8080 every
``MetricPublishFrequencyInSeconds`` and publish what it reads to CloudWatch (SageMaker API
reference, MetricsConfig and ContainerMetricsConfig). Each scrape lands on any one gunicorn
worker, so the workers share their metrics through prometheus_client's multiprocess mode: each
process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder the gunicorn
master makes before it forks, serve/gunicorn_conf.py) and a scrape adds up every process's
files (prometheus_client docs, "Multiprocess Mode"). Outside gunicorn (an app built in a test)
the metrics stay in the app's own registry.

Names follow Prometheus' conventions ("Metric and label naming"): one prefix (``PREFIX``), base
units (seconds), ``_total`` for counters, ``_info`` for a gauge whose labels are the value.
Every label takes its values from a small fixed set (routes, HTTP statuses, the content types
serve accepts, ``REFUSAL_REASONS``), never from a request's free text, so the series stay few.
The gauges of the worker's state (``_info``, load and compile times) are per live worker
(``liveall``: prometheus_client adds a ``pid`` label); queue depth and requests in flight are
summed over the live workers (``livesum``), which is the instance's total and drops a dead
worker's last values, where ``all`` would keep a series per pid ever started.
"""

from __future__ import annotations

import os
from typing import Iterable

from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge,
                               Histogram, disable_created_metrics, generate_latest, multiprocess)

PREFIX = "dogbreeds_"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's variable
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus scraper reads
# From 1 ms (a decode of a small photo) to 60 s (SageMaker's invocation limit).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # up to contract's MAX_BATCH
# Why a 413 or a 503 was answered: the ``kind`` of serve.errors' ClientError and Overloaded.
REFUSAL_REASONS = frozenset({
    "queue_full",  # the worker holds SAGEMAKER_MODEL_SERVER_MAX_QUEUE invocations
    "backlog",  # the work queued ahead would end past the deadline
    "deadline",  # the deadline passed while decoding, queued or running
    "body_memory",  # SERVE_BODY_MEMORY_MB: too large a body, or in use until the deadline
    "decode_memory",  # SERVE_DECODE_MEMORY_MB: too large an image, or in use until the deadline
    "payload",  # the body is over SAGEMAKER_MAX_PAYLOAD_IN_MB
    "model_loading",  # the model was still loading at the deadline
    "model_unavailable",  # the artifact is missing or cannot be served
    "model_failed",  # the worker's model stopped for good
    "other",
})
REFUSED = (413, 503)
# The ``_created`` series (a counter's start time) would double what SageMaker publishes, and
# multiprocess mode writes none: the same scrape in and out of gunicorn.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The folder the workers share their metrics in, when gunicorn's master made one."""
    path = os.environ.get(MULTIPROC_DIR)
    return path if path and os.path.isdir(path) else None


def label(value: str | None, known: Iterable[str]) -> str:
    """``value`` when it is one of ``known``, ``none`` when empty, else ``other``: a label value
    from a fixed set whatever a client sends."""
    if not value:
        return "none"
    return value if value in known else "other"


def program_labels(state: dict) -> dict[str, str]:
    """The ``_info`` labels of what a worker runs, from ``Classifier.describe()``: its
    precision, ``program`` (``compiled``, ``compiling`` while compiled programs are pending, or
    ``eager``) and ``fallback``, the precision that serves uncompiled meanwhile (``none`` when
    nothing is pending)."""
    if state.get("compiling_batch_sizes"):
        program, fallback = "compiling", state.get("eager_precision", "none")
    else:
        program = "compiled" if state.get("compiled_batch_sizes") else "eager"
        fallback = "none"
    return {"precision": state["precision"], "program": program, "fallback": fallback}


class PrometheusMetrics:
    """One worker's metrics (see the module docstring for the names and the sharing between
    workers). ``finished`` records an answered request from its record (serve/record.py);
    the scheduler reports its queue depth; the model holder reports loads and program changes.
    Thread-safe: prometheus_client's values take their own lock."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r, p, s = self.registry, PREFIX, SECONDS_BUCKETS
        self.requests = Counter(f"{p}requests", "HTTP requests answered, by route, status and "
                                "request content type", ["route", "status", "content_type"],
                                registry=r)
        self.refusals = Counter(f"{p}refusals", "invocations answered 413 or 503, by status and "
                                "reason", ["status", "reason"], registry=r)
        self.images = Counter(f"{p}images", "images received in invocations", registry=r)
        self.duration = Histogram(f"{p}invocation_seconds", "time from an invocation's arrival "
                                  "to its answer", buckets=s, registry=r)
        self.decode = Histogram(f"{p}decode_seconds", "an invocation's time decoding its images",
                                buckets=s, registry=r)
        self.queue = Histogram(f"{p}queue_wait_seconds", "an invocation's time waiting for its "
                               "batch to start", buckets=s, registry=r)
        self.compute = Histogram(f"{p}compute_seconds", "an invocation's time in the model "
                                 "(its batch's forward pass)", buckets=s, registry=r)
        self.request_cpu = Counter(f"{p}request_cpu_seconds", "CPU time of the request threads "
                                   "in invocations, by stage: decode (decoding and resizing "
                                   "images) and other (reading the body, parsing, answering)",
                                   ["stage"], registry=r)
        self.batch = Histogram(f"{p}batch_size", "the largest batch an invocation's images ran "
                               "in", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{p}queue_depth", "invocations waiting for a batch, summed "
                                 "over the live workers", multiprocess_mode="livesum", registry=r)
        self.in_flight = Gauge(f"{p}requests_in_flight", "invocations being served, summed over "
                               "the live workers", multiprocess_mode="livesum", registry=r)
        self.model = Gauge(f"{p}model_info", "what each live worker runs (1; a state it left "
                           "reads 0)", ["model_version", "precision", "program", "fallback"],
                           multiprocess_mode="liveall", registry=r)
        self.load_seconds = Gauge(f"{p}model_load_seconds", "each live worker's time to load "
                                  "and warm up its model (0 until it is loaded)", multiprocess_mode="liveall",
                                  registry=r)
        self.compile_seconds = Gauge(f"{p}compile_seconds", "each live worker's time from the "
                                     "start of its model's load until every compiled program "
                                     "was in use (0 until then)", multiprocess_mode="liveall", registry=r)
        self._model_labels: dict[str, str] | None = None

    # ---------------------------------------------------------------- requests
    def started(self) -> None:
        """An invocation arrived (pair with ``ended``)."""
        self.in_flight.inc()

    def ended(self) -> None:
        """An invocation's answer left, or its request was torn down."""
        self.in_flight.dec()

    def finished(self, route: str, status: int, content_type: str, seconds: float,
                 inv=None) -> None:
        """One answered request: its ``route`` and request ``content_type`` (label values from
        a fixed set: ``label``), HTTP ``status`` and ``seconds`` since it arrived; for an
        invocation, ``inv`` its record (serve/record.py: ``fields`` in ms, ``refusal``)."""
        self.requests.labels(route, str(status), content_type).inc()
        if inv is None:
            return
        fields = inv.fields
        self.duration.observe(seconds)
        for histogram, name in ((self.decode, "decode_ms"), (self.queue, "queue_ms"),
                                (self.compute, "compute_ms")):
            if name in fields:
                histogram.observe(fields[name] / 1000)
        if "cpu_ms" in fields:
            decode_ms = fields.get("decode_cpu_ms", 0.0)
            self.request_cpu.labels("decode").inc(decode_ms / 1000)
            self.request_cpu.labels("other").inc(max(fields["cpu_ms"] - decode_ms, 0.0) / 1000)
        if fields.get("batch_size"):
            self.batch.observe(fields["batch_size"])
        if fields.get("images"):
            self.images.inc(fields["images"])
        if status in REFUSED:
            self.refusals.labels(str(status), label(inv.refusal, REFUSAL_REASONS)).inc()

    def queue_changed(self, depth: int) -> None:
        """The scheduler's queue holds ``depth`` invocations waiting for a batch."""
        self.queue_depth.set(depth)

    # ---------------------------------------------------------------- the worker's model
    def model_changed(self, version: str, state: dict) -> None:
        """The worker runs ``state`` (``Classifier.describe()``) of model ``version`` now: its
        ``_info`` series reads 1 and the one it left 0 (prometheus_client cannot remove a
        series in multiprocess mode)."""
        labels = {"model_version": version, **program_labels(state)}
        if labels == self._model_labels:
            return
        if self._model_labels is not None:
            self.model.labels(**self._model_labels).set(0)
        self.model.labels(**labels).set(1)
        self._model_labels = labels

    def model_loaded(self, seconds: float) -> None:
        """The worker's model loaded and warmed up in ``seconds``."""
        self.load_seconds.set(seconds)

    def compiled(self, seconds: float) -> None:
        """Every compiled program is in use, ``seconds`` after the model's load started."""
        self.compile_seconds.set(seconds)

    # ---------------------------------------------------------------- exposition
    def exposition(self) -> bytes:
        """The scrape's body: every worker's metrics added up when gunicorn's master made the
        shared folder (a fresh registry each time, as prometheus_client's docs ask), else this
        app's own."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        return generate_latest(registry)


class MasterMetrics:
    """The gunicorn master's own metric: worker restarts. A worker forked after the first
    ``workers`` replaces one that exited (a crash, its model stopping, a HUP)."""

    def __init__(self, workers: int):
        self.workers, self.forks = workers, 0
        self.restarts = Counter(f"{PREFIX}worker_restarts", "gunicorn workers started to "
                                "replace one that exited", registry=None)

    def forking(self) -> None:
        """The master is about to fork a worker (gunicorn's pre_fork)."""
        self.forks += 1
        if self.forks > self.workers:
            self.restarts.inc()

    @staticmethod
    def exited(pid: int) -> None:
        """A worker exited (gunicorn's child_exit): its live gauges stop counting."""
        multiprocess.mark_process_dead(pid)
