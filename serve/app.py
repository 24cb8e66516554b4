"""The Flask application (factory pattern): /ping, /invocations and /execution-parameters.

gunicorn calls ``create_app()`` in each worker after the fork; the model then loads on a
background thread, so the worker accepts connections at once and /ping answers 503 ("loading")
until the model is loaded and one warm-up inference has run, then 200. gthread workers keep
/ping answering while another thread runs an inference.

Requests (AWS doc "Use your own inference code with hosting services"):
- ``image/jpeg``, ``image/png`` or ``application/x-image``: one image as the body.
- ``application/json``: ``{"instances": [{"b64": "<base64 image>"}, ...], "k": 3,
  "probabilities": true}`` for several images in one forward pass.
Options ``k`` (top-k, default 5) and ``probabilities`` (all class probabilities in class order)
come from the JSON body, the ``X-Amzn-SageMaker-Custom-Attributes`` header (``k=3;
probabilities=true``: InvokeEndpoint's CustomAttributes, the only per-request channel SageMaker
passes through) or the query string (local curl).

Every client error is a 4xx with a JSON reason, never a 500, and the worker lives on.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import logging
import threading
import time

import torch
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serve.config import DEFAULT_TOP_K, Settings
from serve.decode import BadImage
from serve.model import ArtifactError, Classifier

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
RETRY_LOAD_S = 2.0

access_log = logging.getLogger("serve.access")
logger = logging.getLogger("serve")


class ClientError(Exception):
    """A request the server cannot serve; becomes ``status`` with a JSON reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class ModelHolder:
    """Loads the classifier on a background thread, retrying while the artifact is incomplete,
    and tells /ping whether it is ready."""

    def __init__(self, settings: Settings, device: torch.device):
        self.settings, self.device = settings, device
        self.classifier: Classifier | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> "ModelHolder":
        self._thread.start()
        return self

    def _load(self) -> None:
        last = None
        while True:
            try:
                start = time.perf_counter()
                classifier = Classifier(self.settings.model_dir, self.device,
                                        self.settings.max_pixels)
                warm_ms = classifier.warm_up()
                # The loaded program is hundreds of thousands of long-lived Python objects (the
                # exported graph). Left to the cyclic GC, each full collection walks them all:
                # about 150 ms, one request in ~60 (measured, resnet50 on 2 vCPUs). gc.freeze()
                # moves everything alive now out of the collector's sight (Python docs, gc.freeze).
                gc.collect()
                gc.freeze()
                self.classifier, self.error = classifier, None
                logger.info("model %s loaded on %s in %.0f ms (warm-up %.0f ms)",
                            classifier.version, self.device,
                            (time.perf_counter() - start) * 1000, warm_ms)
                training = classifier.manifest.get("training") or {}
                if training.get("complete") is False:
                    logger.warning("model %s is partial: its training job was stopped by %s "
                                   "after %s of %s epochs; the weights are from %s",
                                   classifier.version, training.get("stopped_by"),
                                   training.get("epochs_completed"), training.get("epochs"),
                                   training.get("weights_from"))
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


def _error(status: int, reason: str):
    names = {400: "bad_request", 406: "not_acceptable", 413: "payload_too_large",
             415: "unsupported_media_type", 503: "model_not_ready"}
    response = jsonify({"status": status, "error": names.get(status, "error"), "reason": reason})
    response.status_code = status
    return response


def _options(body_options: dict, num_classes: int) -> tuple[int, bool]:
    raw: dict = {}
    header = request.headers.get(CUSTOM_ATTRIBUTES, "")
    for part in header.replace(",", ";").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            raw[key.strip().lower()] = value.strip()
    raw.update({k: v for k, v in request.args.items() if k in ("k", "probabilities")})
    raw.update({k: v for k, v in body_options.items() if k in ("k", "probabilities")})
    if "k" not in raw:
        # The default is a convenience, not a demand: a 2-class model answers its top 2.
        k = min(DEFAULT_TOP_K, num_classes)
    else:
        k = raw["k"]
    try:
        if isinstance(k, bool):
            raise ValueError
        k = int(k)
    except (TypeError, ValueError):
        raise ClientError(400, f"k={k!r} is not an integer") from None
    if not 1 <= k <= num_classes:
        raise ClientError(400, f"k={k} must be between 1 and {num_classes}")
    probabilities = str(raw.get("probabilities", "false")).lower() in ("true", "1", "yes", "all")
    return k, probabilities


def _json_images(data: bytes) -> tuple[list[bytes], dict]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"the body is not valid JSON: {exc}") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ClientError(400, 'expected {"instances": [{"b64": "<base64 image>"}, ...]} with at '
                               'least one instance')
    images = []
    for i, instance in enumerate(instances):
        b64 = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(b64, str):
            raise ClientError(400, f'instance {i} has no "b64" string')
        try:
            images.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise ClientError(400, f"instance {i}: invalid base64") from None
    return images, doc


def create_app(settings: Settings | None = None, device: torch.device | None = None) -> Flask:
    """Build the app and start loading the model in the background.

    Args:
        settings: defaults to ``Settings.from_env()``.
        device: defaults to the GPU in ``SERVE_GPU_INDEX`` (set per worker by gunicorn_conf)
            when CUDA is usable, else the CPU.
    """
    settings = settings or Settings.from_env()
    if device is None:
        import os

        if settings.gpus:
            device = torch.device("cuda", int(os.environ.get("SERVE_GPU_INDEX", "0")))
        else:
            device = torch.device("cpu")
            torch.set_num_threads(settings.threads_per_worker)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    holder = ModelHolder(settings, device).start()
    app.extensions["model"] = holder

    @app.before_request
    def _start_timer():
        g.start = time.perf_counter()

    @app.after_request
    def _access_log(response):
        if request.path != "/ping" or response.status_code != 200:
            access_log.info(json.dumps({
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "latency_ms": round((time.perf_counter() - g.get("start", time.perf_counter()))
                                    * 1000, 2),
                "content_type": request.mimetype or None,
                "bytes": request.content_length or 0,
                "images": g.get("images", 0),
            }))
        return response

    @app.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        return _error(exc.status, exc.reason)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, f"the body is over the {settings.max_payload_bytes:,}-byte limit "
                               f"(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        return _error(exc.code or 500, exc.description or exc.name)

    @app.get("/ping")
    def ping():
        if holder.classifier is None:
            return _error(503, holder.error or "the model is loading")
        return jsonify({"status": "ok", "model_version": holder.classifier.version})

    @app.get("/execution-parameters")
    def execution_parameters():
        return jsonify({
            "MaxConcurrentTransforms": settings.max_concurrent_transforms,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_bytes // (1024 * 1024),
        })

    @app.post("/invocations")
    def invocations():
        # No Accept header means anything goes (RFC 9110 12.5.1).
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(
                [JSON_TYPE]) is None:
            raise ClientError(406, f"Accept: {request.headers.get('Accept')!r} cannot be served; "
                                   f"responses are {JSON_TYPE}")
        content_type = request.mimetype
        if content_type not in IMAGE_TYPES + (JSON_TYPE,):
            raise ClientError(415, f"Content-Type {content_type or '(none)'!r} is not supported; "
                                   f"use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
        classifier = holder.classifier
        if classifier is None:
            raise ClientError(503, holder.error or "the model is loading")
        data = request.get_data(cache=False)
        if content_type == JSON_TYPE:
            images, doc = _json_images(data)
        else:
            images, doc = [data], {}
        if len(images) > classifier.max_batch:
            raise ClientError(400, f"{len(images)} images; at most {classifier.max_batch}")
        k, want_all = _options(doc, len(classifier.classes))
        g.images = len(images)
        try:
            predictions = classifier.predict(images)
        except BadImage as exc:
            raise ClientError(400, str(exc)) from None
        out = []
        for p in predictions:
            top = torch.topk(p.probabilities, k)
            item = {"top_k": [{"label": classifier.classes[i], "index": int(i),
                               "probability": round(float(v), 6)}
                              for v, i in zip(top.values.tolist(), top.indices.tolist())]}
            if want_all:
                item["probabilities"] = [round(float(v), 6) for v in p.probabilities.tolist()]
            out.append(item)
        return jsonify({"model_version": classifier.version, "predictions": out})

    return app
