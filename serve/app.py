"""The Flask application (factory pattern): /ping, /invocations and /execution-parameters.

gunicorn calls ``create_app()`` in each worker after the fork; the model loads on a background
thread (serve/lifecycle.py). An invocation checks its cost before any work (bytes, images,
pixels: a 4xx with the limit), decodes its images in its own thread, then waits for the
worker's model thread to run them in a batch with whatever else is queued (serve/scheduler.py),
within its deadline. Every client error is a 4xx with a JSON reason, an overload a 503 with
Retry-After, never a 500, and the worker lives on.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serve.config import REQUEST_DEADLINE_SHARE, Settings
from serve.decode import BadImage, inspect, to_model_input
from serve.invocation import (CUSTOM_ATTRIBUTES, IMAGE_TYPES, JSON_TYPE, ClientError,
                              image_bodies, options, predictions)
from serve.lifecycle import ModelHolder
from serve.scheduler import MemoryBudget, Overloaded

access_log = logging.getLogger("serve.access")

ERROR_NAMES = {400: "bad_request", 406: "not_acceptable", 413: "payload_too_large",
               415: "unsupported_media_type", 503: "service_unavailable"}


def _error(status: int, reason: str, retry_after_s: int | None = None):
    response = jsonify({"status": status, "error": ERROR_NAMES.get(status, "error"),
                        "reason": reason})
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def _device(settings: Settings) -> torch.device:
    """The GPU gunicorn_conf assigned this worker (SERVE_GPU_INDEX), else the CPU with the
    worker's share of the cores for torch's intra-op threads."""
    if settings.gpus:
        return torch.device("cuda", int(os.environ.get("SERVE_GPU_INDEX", "0")))
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
    holder = ModelHolder(settings, device or _device(settings)).start()
    budget = MemoryBudget(settings.decode_memory_bytes)
    app.extensions["model"] = holder

    @app.before_request
    def _start_timer():
        g.start = time.monotonic()
        g.log = {}

    @app.after_request
    def _access_log(response):
        if request.path != "/ping" or response.status_code != 200:
            access_log.info(json.dumps({
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": round((time.monotonic() - g.get("start", time.monotonic()))
                                    * 1000, 2),
                "content_type": request.mimetype or None,
                "bytes": request.content_length or 0,
                **g.get("log", {}),
            }))
        return response

    @app.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        return _error(exc.status, exc.reason, exc.retry_after_s)

    @app.errorhandler(Overloaded)
    def _overloaded(exc: Overloaded):
        return _error(503, exc.reason, exc.retry_after_s)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, f"the body is over the {settings.max_payload_bytes:,}-byte limit "
                               f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        return _error(exc.code or 500, exc.description or exc.name)

    @app.get("/ping")
    def ping():
        if not holder.ready.is_set():
            return _error(503, holder.error or "the model is loading")
        return jsonify({"status": "ok", "model_version": holder.classifier.version})

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify({
            "MaxConcurrentTransforms": settings.max_concurrent_transforms,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_bytes // (1024 * 1024),
        })

    def ready_model(deadline: float):
        """The loaded classifier and scheduler, waiting for them within the deadline.

        Raises:
            ClientError: 503 while the artifact is missing or broken, or still loading at the
                deadline.
        """
        if not holder.wait_ready(deadline):
            raise ClientError(503, holder.error or "the model is still loading",
                              retry_after_s=1 if holder.error is None else None)
        return holder.classifier, holder.scheduler

    def check_cost(n_images: int, ms_per_image: float) -> None:
        """Images per request, and their share of the deadline at the measured cost."""
        if n_images > settings.max_images_per_request:
            raise ClientError(400, f"{n_images} images in one request; the limit is "
                                   f"{settings.max_images_per_request} "
                                   f"(SERVE_MAX_IMAGES_PER_REQUEST)")
        budget_s = settings.timeout_s * REQUEST_DEADLINE_SHARE
        if n_images * ms_per_image / 1000 > budget_s:
            most = max(1, int(budget_s * 1000 / ms_per_image))
            raise ClientError(400, f"{n_images} images would take about "
                                   f"{n_images * ms_per_image / 1000:.0f} s here "
                                   f"({ms_per_image:.0f} ms each), over "
                                   f"{REQUEST_DEADLINE_SHARE:.0%} of the {settings.timeout_s} s "
                                   f"deadline; send at most {most} per request")

    def decode_all(bodies: list[bytes], geometry, deadline: float) -> np.ndarray:
        """uint8 [n, crop, crop, 3], each image inspected (pixel limits) before it decodes and
        decoded under the worker's memory budget."""
        arrays = []
        for i, body in enumerate(bodies):
            try:
                inspected = inspect(body, geometry, settings.max_pixels,
                                    settings.max_resized_pixels)
                if inspected.decode_bytes > budget.total:
                    raise ClientError(413, f"decoding the image takes about "
                                           f"{inspected.decode_bytes / 2**20:.0f} MB; the limit "
                                           f"is {budget.total / 2**20:.0f} MB "
                                           f"(SERVE_DECODE_MEMORY_MB)")
                budget.acquire(inspected.decode_bytes, deadline)
                try:
                    arrays.append(to_model_input(inspected, geometry))
                finally:
                    budget.release(inspected.decode_bytes)
            except BadImage as exc:
                raise ClientError(400, f"image {i}: {exc}" if len(bodies) > 1 else str(exc))
        return np.stack(arrays)

    @app.post("/invocations")
    def invocations():
        deadline = g.start + settings.timeout_s
        # No Accept header means anything goes (RFC 9110 12.5.1).
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(
                [JSON_TYPE]) is None:
            raise ClientError(406, f"Accept: {request.headers.get('Accept')!r} cannot be served; "
                                   f"responses are {JSON_TYPE}")
        if request.mimetype not in IMAGE_TYPES + (JSON_TYPE,):
            raise ClientError(415, f"Content-Type {request.mimetype or '(none)'!r} is not "
                                   f"supported; use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
        classifier, scheduler = ready_model(deadline)
        bodies, doc = image_bodies(request.mimetype, request.get_data(cache=False))
        g.log["images"] = len(bodies)
        check_cost(len(bodies), scheduler.ms_per_image)
        k, want_all = options(doc, request.headers.get(CUSTOM_ATTRIBUTES, ""), request.args,
                              len(classifier.classes))
        scheduler.admit(len(bodies), deadline)
        decode_start = time.monotonic()
        try:
            images = decode_all(bodies, classifier.geometry, deadline)
        except BaseException:
            scheduler.release()
            raise
        g.log["decode_ms"] = round((time.monotonic() - decode_start) * 1000, 2)
        job = scheduler.submit(images, deadline)
        probabilities = scheduler.wait(job)
        g.log.update(batch_size=job.batch_size, queue_ms=round(job.queue_ms, 2),
                     compute_ms=round(job.compute_ms, 2))
        return jsonify({"model_version": classifier.version,
                        "predictions": predictions(probabilities, classifier.classes, k,
                                                   want_all)})

    return app
