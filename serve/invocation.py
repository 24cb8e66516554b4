"""What an invocation carries, how it is served, and what it answers.

``InvocationHandler.handle`` is the whole of one invocation: checks before any work (content
type, Accept, images, their share of the deadline), the model (waiting for it within the
deadline), a place in the scheduler's queue, each image's decode under the worker's memory
budget, the batch, and the answer.

Requests (AWS doc "Use your own inference code with hosting services"):
- ``image/jpeg``, ``image/png`` or ``application/x-image``: one image as the body.
- ``application/json``: ``{"instances": [{"b64": "<base64 image>"}, ...], "k": 3,
  "probabilities": true}`` for several images in one request.
Options ``k`` (top-k, default 5 or the number of classes if fewer) and ``probabilities`` (all
class probabilities in class order) come from the JSON body, the
``X-Amzn-SageMaker-Custom-Attributes`` header (``k=3;probabilities=true``: InvokeEndpoint's
CustomAttributes, the only per-request channel SageMaker passes through) or the query string.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

import numpy as np

from serve.config import DEFAULT_TOP_K, REQUEST_DEADLINE_SHARE, Settings
from serve.decode import BadImage, Geometry, inspect, to_model_input
from serve.lifecycle import ModelHolder
from serve.scheduler import MemoryBudget

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
OPTION_NAMES = ("k", "probabilities")


class ClientError(Exception):
    """A request the server cannot serve; becomes ``status`` with a JSON reason (and a
    Retry-After header when ``retry_after_s`` is set)."""

    def __init__(self, status: int, reason: str, retry_after_s: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s


def image_bodies(content_type: str, data: bytes) -> tuple[list[bytes], dict]:
    """The images a request carries and its JSON options (empty for a bare image).

    Raises:
        ClientError: 400 for JSON that is not valid, nested too deeply, or not of the
            ``instances`` form, and for bad base64.
    """
    if content_type != JSON_TYPE:
        return [data], {}
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ClientError(400, "the JSON body is nested too deeply") from None
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


def options(body_options: dict, header: str, query: dict, num_classes: int) -> tuple[int, bool]:
    """``(k, probabilities)`` from the JSON body, else the query string, else the
    CustomAttributes header (``k=3;probabilities=true``).

    Raises:
        ClientError: 400 for a ``k`` that is not an integer from 1 to ``num_classes``.
    """
    raw: dict = {}
    for part in header.replace(",", ";").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            raw[key.strip().lower()] = value.strip()
    raw.update({k: v for k, v in query.items() if k in OPTION_NAMES})
    raw.update({k: v for k, v in body_options.items() if k in OPTION_NAMES})
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


def predictions(probabilities: np.ndarray, classes: list[str], k: int, want_all: bool
                ) -> list[dict]:
    """The response's ``predictions``: per image its top ``k`` classes (label, index,
    probability; highest first) and, with ``want_all``, every probability in class order.
    ``probabilities``: float32 [n, classes]."""
    out = []
    for row in probabilities:
        top = np.argsort(-row, kind="stable")[:k]
        item = {"top_k": [{"label": classes[i], "index": int(i),
                           "probability": round(float(row[i]), 6)} for i in top]}
        if want_all:
            item["probabilities"] = [round(float(v), 6) for v in row]
        out.append(item)
    return out


class InvocationHandler:
    """Serves ``/invocations`` for one worker: its settings, its model holder and the memory
    budget its request threads share."""

    def __init__(self, settings: Settings, holder: ModelHolder):
        self.settings, self.holder = settings, holder
        self.budget = MemoryBudget(settings.decode_memory_bytes)

    def handle(self, request, deadline: float, log: dict, observed: dict) -> dict:
        """The JSON answer to a Flask ``request``; fills ``log`` (images, decode, batch, queue
        and compute ms) for the access log, and ``observed`` for the metrics (``confidences``
        of its images, or the ``decode_failure`` kind that ended it).

        Raises:
            ClientError: 4xx (or 503 while the model is missing or still loading).
            serve.scheduler.Overloaded: 503, the request cannot be served by ``deadline``.
        """
        # No Accept header means anything goes (RFC 9110 12.5.1).
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(
                [JSON_TYPE]) is None:
            raise ClientError(406, f"Accept: {request.headers.get('Accept')!r} cannot be served; "
                                   f"responses are {JSON_TYPE}")
        if request.mimetype not in IMAGE_TYPES + (JSON_TYPE,):
            raise ClientError(415, f"Content-Type {request.mimetype or '(none)'!r} is not "
                                   f"supported; use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
        classifier, scheduler = self._ready_model(deadline)
        bodies, doc = image_bodies(request.mimetype, request.get_data(cache=False))
        log["images"] = len(bodies)
        self._check_cost(len(bodies), scheduler.ms_per_image)
        k, want_all = options(doc, request.headers.get(CUSTOM_ATTRIBUTES, ""), request.args,
                              len(classifier.classes))
        scheduler.admit(len(bodies), deadline)
        decode_start = time.monotonic()
        try:
            images, sizes = self._decode_all(bodies, classifier.geometry, deadline, observed)
        except BaseException:
            scheduler.release()
            raise
        log["decode_ms"] = round((time.monotonic() - decode_start) * 1000, 2)
        job = scheduler.submit(images, deadline)
        probabilities = scheduler.wait(job)
        log.update(batch_size=job.batch_size, queue_ms=round(job.queue_ms, 2),
                   compute_ms=round(job.compute_ms, 2))
        top = probabilities.argmax(1)
        observed["confidences"] = probabilities[np.arange(len(top)), top].tolist()
        drift = self.holder.drift
        if drift is not None:
            for image, (width, height), cls, conf in zip(images, sizes, top,
                                                         observed["confidences"]):
                drift.add(int(cls), conf, float(image.mean()), width / height,
                          width * height / 1e6)
        return {"model_version": classifier.version,
                "predictions": predictions(probabilities, classifier.classes, k, want_all)}

    def _ready_model(self, deadline: float):
        """The loaded classifier and scheduler, waiting for them within the deadline.

        Raises:
            ClientError: 503 while the artifact is missing or broken, or still loading at the
                deadline.
        """
        holder = self.holder
        if not holder.wait_ready(deadline):
            raise ClientError(503, holder.error or "the model is still loading",
                              retry_after_s=1 if holder.error is None else None)
        return holder.classifier, holder.scheduler

    def _check_cost(self, n_images: int, ms_per_image: float) -> None:
        """Images per request, and their share of the deadline at the measured cost."""
        s = self.settings
        if n_images > s.max_images_per_request:
            raise ClientError(400, f"{n_images} images in one request; the limit is "
                                   f"{s.max_images_per_request} (SERVE_MAX_IMAGES_PER_REQUEST)")
        budget_s = s.timeout_s * REQUEST_DEADLINE_SHARE
        if n_images * ms_per_image / 1000 > budget_s:
            most = max(1, int(budget_s * 1000 / ms_per_image))
            raise ClientError(400, f"{n_images} images would take about "
                                   f"{n_images * ms_per_image / 1000:.0f} s here "
                                   f"({ms_per_image:.0f} ms each), over "
                                   f"{REQUEST_DEADLINE_SHARE:.0%} of the {s.timeout_s} s "
                                   f"deadline; send at most {most} per request")

    def _decode_all(self, bodies: list[bytes], geometry: Geometry, deadline: float,
                    observed: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """uint8 [n, crop, crop, 3] and each original's (width, height), each image inspected
        (pixel limits) before it decodes and decoded under the worker's memory budget."""
        s, budget = self.settings, self.budget
        arrays, sizes = [], []
        for i, body in enumerate(bodies):
            try:
                inspected = inspect(body, geometry, s.max_pixels, s.max_resized_pixels)
                if inspected.decode_bytes > budget.total:
                    raise ClientError(413, f"decoding the image takes about "
                                           f"{inspected.decode_bytes / 2**20:.0f} MB; the limit "
                                           f"is {budget.total / 2**20:.0f} MB "
                                           f"(SERVE_DECODE_MEMORY_MB)")
                budget.acquire(inspected.decode_bytes, deadline)
                try:
                    arrays.append(to_model_input(inspected, geometry))
                    sizes.append(inspected.size)
                finally:
                    budget.release(inspected.decode_bytes)
            except BadImage as exc:
                observed["decode_failure"] = exc.kind
                raise ClientError(400, f"image {i}: {exc}" if len(bodies) > 1 else str(exc))
        return np.stack(arrays), sizes
