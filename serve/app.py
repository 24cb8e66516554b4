"""The Flask application (factory pattern): /ping, /invocations, /execution-parameters and
/metrics (Prometheus text, serve/prometheus.py; SERVE_PROMETHEUS=off leaves it out).

gunicorn calls ``create_app()`` in each worker after the fork; the model loads on a background
thread (serve/lifecycle.py). An invocation checks its cost before any work (bytes, images,
pixels: a 4xx with the limit), decodes its images in its own thread, then waits for the
worker's model thread to run them in a batch with whatever else is queued (serve/scheduler.py),
within its deadline. Every client error is a 4xx with a JSON reason, an overload a 503 with
Retry-After, never a 500, and the worker lives on. /ping answers 200 only while the model is
loaded and its thread serves; a worker whose model thread died or whose device broke answers
503 and exits (serve/lifecycle.py), and gunicorn starts another.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serve import batch_transform, jsonlines
from serve.answers import error_body
from serve.config import REFUSAL_DRAIN_S, Settings
from serve.invocation import CONTENT_TYPES, InvocationHandler
from serve.lifecycle import ModelHolder
from serve.prometheus import CONTENT_TYPE, PrometheusMetrics, label
from serve.record import Invocation
from serve.threads import name_this_thread
from serve.errors import BodyTimeout, ClientError, ModelFailed, Overloaded

access_log = logging.getLogger("serve.access")
ROUTES = ("/ping", "/invocations", "/execution-parameters", "/metrics")
QUIET = ("/ping", "/metrics")  # polled by SageMaker: logged only when not answered 200

def _error(status: int, reason: str, retry_after_s: int | None = None):
    response = jsonify(error_body(status, reason))
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def _device(settings: Settings) -> torch.device:
    """The GPU gunicorn_conf assigned this worker (the only one its CUDA_VISIBLE_DEVICES
    shows), else the CPU with the worker's share of the cores for torch's intra-op threads."""
    if settings.gpus:
        return torch.device("cuda", 0)
    torch.set_num_threads(settings.threads_per_worker)
    return torch.device("cpu")


def create_app(settings: Settings | None = None, device: torch.device | None = None) -> Flask:
    """Build the app and start loading the model in the background.

    Args:
        settings: defaults to ``Settings.from_env()``.
        device: defaults to the worker's GPU when there are GPUs, else the CPU.
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    prometheus = PrometheusMetrics() if settings.prometheus else None
    holder = ModelHolder(settings, device or _device(settings), prometheus=prometheus).start()
    handler = InvocationHandler(settings, holder)
    app.extensions["model"] = holder
    app.extensions["invocations"] = handler
    app.extensions["prometheus"] = prometheus

    @app.before_request
    def _start_timer():
        name_this_thread("serve-request")
        start = time.monotonic()
        g.invocation = Invocation(request, start, start + settings.timeout_s)
        if prometheus is not None and request.path == "/invocations":
            prometheus.started()
            g.in_flight = True

    @app.teardown_request
    def _end(_exc):
        if g.pop("in_flight", False):
            prometheus.ended()

    @app.after_request
    def _access_log(response):
        inv = g.get("invocation") or Invocation(request, time.monotonic(), 0.0)
        latency_ms = (time.monotonic() - inv.started) * 1000
        invocation = request.path == "/invocations"
        if invocation:
            inv.finished_cpu()
        fields = inv.log_fields()
        if invocation and holder.metrics is not None:
            holder.metrics.record(response.status_code, {"latency_ms": latency_ms, **fields},
                                  inv.confidences, inv.decode_failure)
        if prometheus is not None:
            prometheus.finished(label(request.path, ROUTES), response.status_code,
                                label(request.mimetype, CONTENT_TYPES), latency_ms / 1000,
                                inv if invocation else None)
        if request.path not in QUIET or response.status_code != 200:
            access_log.info(json.dumps({
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": round(latency_ms, 2),
                "content_type": request.mimetype or None,
                "bytes": request.content_length or 0,
                **fields,
            }))
        return response

    def _refused(status: int, reason: str, retry_after_s: int | None = None,
                 kind: str | None = None):
        """An error answer (``kind``: a 413's or 503's cause, for the metrics); an invocation
        refused before its body was read drains the body briefly first, so the connection
        stays usable without a slow sender holding the thread."""
        inv = g.get("invocation")
        if inv is not None:
            inv.refusal = kind
        if request.path == "/invocations" and not (inv and inv.body_read):
            handler.pipeline.bodies.drain(request, REFUSAL_DRAIN_S)
        return _error(status, reason, retry_after_s)

    @app.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        return _refused(exc.status, exc.reason, exc.retry_after_s, exc.kind)

    @app.errorhandler(Overloaded)
    def _overloaded(exc: Overloaded):
        return _refused(503, exc.reason, exc.retry_after_s, exc.kind)

    @app.errorhandler(ModelFailed)
    def _model_failed(exc: ModelFailed):
        return _refused(503, f"this worker's model stopped ({exc}); it is being replaced", 1,
                        "model_failed")

    @app.errorhandler(BodyTimeout)
    def _body_timeout(exc: BodyTimeout):
        return _error(408, f"{exc} (SERVE_BODY_TIMEOUT_S)")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _refused(413, f"the body is over the {settings.max_payload_bytes:,}-byte "
                                 f"limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)", kind="payload")
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The model failing on one batch (the scheduler re-checks the model after it): the
        # request gets a JSON reason, the worker serves on.
        access_log.exception("invocation failed")
        return _error(500, f"{type(exc).__name__}: {exc}")

    @app.get("/ping")
    def ping():
        reason = holder.status()
        if reason is not None:
            return _error(503, reason)
        return jsonify({"status": "ok", "model_version": holder.classifier.version,
                        **holder.classifier.describe()})

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify(batch_transform.execution_parameters(settings))

    if prometheus is not None:
        @app.get("/metrics")
        def metrics():
            # Answered by a spare thread like /ping: no admission place, no model, no lock of
            # the model thread; only the workers' metric files are read.
            return Response(prometheus.exposition(), content_type=CONTENT_TYPE)

    @app.post("/invocations")
    def invocations():
        answer = handler.handle(g.invocation)
        if isinstance(answer, bytes):
            return Response(answer, mimetype=jsonlines.ANSWER_TYPE)
        return jsonify(answer)

    return app
