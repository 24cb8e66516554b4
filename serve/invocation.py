"""What an invocation carries, how it is served, and what it answers.

``InvocationHandler.handle`` is the whole of one invocation, each step bounded before it runs:
a place among the worker's ``max_queue`` invocations (else a 503 at once, so a flood or slow
senders never hold every thread and /ping always finds one); the body, read by its deadline
(serve/body.py); the model (waiting for it within the deadline); the images counted and their
headers read before any is decoded; their cost in model time and decode time against their share
of the deadline; a place in the scheduler's queue; each image's decode under the worker's memory
budget, the deadline checked between images; the batch, and the answer.

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
import ctypes
import ctypes.util
import json
import logging
import re
import threading
import time

import numpy as np

from contract.preprocess import Geometry
from serve.body import BodyReader
from serve.config import DEFAULT_TOP_K, REQUEST_DEADLINE_SHARE, Settings
from serve.decode import BadImage, Inspected, inspect, to_model_input
from serve.lifecycle import ModelHolder
from serve.scheduler import MemoryBudget, ModelFailed, Overloaded

logger = logging.getLogger("serve")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
OPTION_NAMES = ("k", "probabilities")
# A well-formed JSON request has one object per instance plus one, and a comma between
# instances and options: more of either is refused before json.loads builds millions of objects.
JSON_VALUES_PER_IMAGE = 2
JSON_SPARE_VALUES = 32
# First guess of the decode cost (ms per decoded megapixel), refined from every decode.
DECODE_MS_PER_MEGAPIXEL = 10.0
DECODE_COST_SMOOTHING = 0.2
# After this many bytes of large decoded frames and bodies are freed, the worker hands the free
# heap back to the system: glibc keeps freed blocks in the arena of the thread that freed them,
# where other threads cannot reuse them, and a worker grew to 1.6 GB over its idle size under a
# burst of large PNGs whose decodes never held more than 512 MB at once (malloc_trim costs
# about 5 ms with ResNet50 loaded, so small frees do not count).
TRIM_AFTER_BYTES = 64 * 2**20
LARGE_FREE_BYTES = 1 * 2**20


class ClientError(Exception):
    """A request the server cannot serve; becomes ``status`` with a JSON reason (and a
    Retry-After header when ``retry_after_s`` is set)."""

    def __init__(self, status: int, reason: str, retry_after_s: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s


def image_bodies(content_type: str, data: bytes, max_images: int) -> tuple[list[bytes], dict]:
    """The images a request carries and its JSON options (empty for a bare image). A JSON body's
    size is checked before it is parsed and its count of images before any is base64-decoded.

    Raises:
        ClientError: 400 for JSON that is not valid, nested too deeply, not of the
            ``instances`` form, with more than ``max_images`` instances or values enough for
            them, and for an empty or bad base64 string.
    """
    if content_type != JSON_TYPE:
        return [data], {}
    objects = data.count(b"{") - 1  # an object per instance, in the request's object
    if objects > max_images:
        raise ClientError(400, f"{objects} images in one request; the limit is {max_images} "
                               f"(SERVE_MAX_IMAGES_PER_REQUEST)")
    values = data.count(b"{") + data.count(b",")  # deep nesting: json.loads' RecursionError
    if values > JSON_VALUES_PER_IMAGE * max_images + JSON_SPARE_VALUES:
        raise ClientError(400, f"the JSON body holds about {values:,} values; a request carries "
                               f"at most {max_images} images (SERVE_MAX_IMAGES_PER_REQUEST)")
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
    if len(instances) > max_images:
        raise ClientError(400, f"{len(instances)} images in one request; the limit is "
                               f"{max_images} (SERVE_MAX_IMAGES_PER_REQUEST)")
    strings = []
    for i, instance in enumerate(instances):
        b64 = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(b64, str):
            raise ClientError(400, f'instance {i} has no "b64" string')
        if not b64:
            raise ClientError(400, f'instance {i}: "b64" is empty')
        strings.append(b64)
    doc["instances"] = instances = None  # the strings are all the request keeps
    images = []
    for i in range(len(strings)):
        try:
            images.append(base64.b64decode(strings[i], validate=True))
        except (binascii.Error, ValueError):
            raise ClientError(400, f"instance {i}: invalid base64") from None
        strings[i] = None  # freed as soon as it is decoded
    return images, doc


_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def options(body_options: dict, header: str, query: dict, num_classes: int) -> tuple[int, bool]:
    """``(k, probabilities)`` from the JSON body, else the query string, else the
    CustomAttributes header (``k=3;probabilities=true``). ``k`` is a JSON integer or a string of
    decimal digits; anything else (a float, an infinity or NaN, a bool, a huge number) is
    refused, not rounded.

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
        value = raw["k"]
        if isinstance(value, int) and not isinstance(value, bool):
            k = value
        elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            k = int(value)
        else:
            raise ClientError(400, f"k={value!r:.40} is not an integer")
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
    """Serves ``/invocations`` for one worker: its settings, its model holder, the places its
    invocations take, the memory budget its request threads share and the decode cost they
    measure."""

    def __init__(self, settings: Settings, holder: ModelHolder):
        self.settings, self.holder = settings, holder
        self.budget = MemoryBudget(settings.decode_memory_bytes)
        self.bodies = BodyReader()
        self._places = threading.BoundedSemaphore(settings.max_queue)
        # Decodes at once: one per core the worker has (at least 2, so one slow image never
        # holds the rest). More would only share the cores and finish together, later, so
        # batches would form from images that all waited.
        self._decoders = threading.BoundedSemaphore(max(2, settings.threads_per_worker))
        self._lock = threading.Lock()
        self.decode_ms_per_megapixel = DECODE_MS_PER_MEGAPIXEL
        self._freed = 0  # bytes freed since the heap was last trimmed

    def handle(self, request, started: float, deadline: float, log: dict,
               observed: dict) -> dict:
        """The JSON answer to a Flask ``request`` that arrived at ``started`` and must be
        answered by ``deadline`` (time.monotonic()); fills ``log`` (images, decode, batch,
        queue and compute ms) for the access log, and ``observed`` for the metrics
        (``confidences`` of its images, or the ``decode_failure`` kind that ended it) and the
        app (``body_read`` once the body is in).

        Raises:
            ClientError: 4xx (or 503 while the model is missing or still loading).
            serve.body.BodyTimeout: the body did not arrive in time (408).
            serve.scheduler.Overloaded: 503, the request cannot be served by ``deadline``.
            serve.scheduler.ModelFailed: 503, the worker's model stopped for good.
        """
        # No Accept header means anything goes (RFC 9110 12.5.1).
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(
                [JSON_TYPE]) is None:
            raise ClientError(406, f"Accept: {request.headers.get('Accept')!r} cannot be served; "
                                   f"responses are {JSON_TYPE}")
        if request.mimetype not in IMAGE_TYPES + (JSON_TYPE,):
            raise ClientError(415, f"Content-Type {request.mimetype or '(none)'!r} is not "
                                   f"supported; use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
        s = self.settings
        if not self._places.acquire(blocking=False):
            raise Overloaded(f"the worker holds {s.max_queue} invocations, its bound "
                             f"(SAGEMAKER_MODEL_SERVER_MAX_QUEUE); retry", 1)
        try:
            return self._serve(request, started, deadline, log, observed)
        finally:
            self._places.release()

    def _serve(self, request, started: float, deadline: float, log: dict, observed: dict
               ) -> dict:
        s = self.settings
        data = self.bodies.read(request, min(deadline, started + s.body_timeout_s), started)
        observed["body_read"] = True
        classifier, scheduler = self._ready_model(deadline)
        bodies, doc = image_bodies(request.mimetype, data, s.max_images_per_request)
        body_bytes, data = len(data), None
        log["images"] = len(bodies)
        k, want_all = options(doc, request.headers.get(CUSTOM_ATTRIBUTES, ""), request.args,
                              len(classifier.classes))
        inspected = self._inspect_all(bodies, classifier.geometry, observed)
        self._check_cost(inspected, scheduler.ms_per_image)
        scheduler.admit(len(bodies), deadline)
        decode_start = time.monotonic()
        try:
            images, sizes = self._decode_all(inspected, classifier.geometry, deadline, observed)
        except BaseException:
            scheduler.release()
            raise
        finally:
            self._freed_bytes(body_bytes)
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
            ModelFailed: the model stopped for good.
        """
        holder = self.holder
        if not holder.wait_ready(deadline):
            raise ClientError(503, holder.status(), retry_after_s=None if holder.failed else 1)
        if not holder.healthy():
            raise ModelFailed(holder.status())
        return holder.classifier, holder.scheduler

    def _inspect_all(self, bodies: list[bytes], geometry: Geometry, observed: dict
                     ) -> list[Inspected]:
        """Every image's header (pixel limits, decode memory), before any is decoded.

        Raises:
            ClientError: 400 for a bad image (``image i:`` when there are several), 413 for one
                whose decode alone is over the worker's decode memory.
        """
        s, out = self.settings, []
        for i, body in enumerate(bodies):
            try:
                inspected = inspect(body, geometry, s.max_pixels, s.max_resized_pixels)
            except BadImage as exc:
                observed["decode_failure"] = exc.kind
                raise ClientError(400, f"image {i}: {exc}" if len(bodies) > 1 else str(exc))
            if inspected.decode_bytes > self.budget.total:
                raise ClientError(413, f"{f'image {i}: ' if len(bodies) > 1 else ''}decoding "
                                       f"the image takes about "
                                       f"{inspected.decode_bytes / 2**20:.0f} MB; the limit is "
                                       f"{self.budget.total / 2**20:.0f} MB "
                                       f"(SERVE_DECODE_MEMORY_MB)")
            out.append(inspected)
        return out

    def _check_cost(self, inspected: list[Inspected], ms_per_image: float) -> None:
        """Images per request, and their share of the deadline: the model's measured cost per
        image plus the decode's measured cost per megapixel."""
        s = self.settings
        budget_s = s.timeout_s * REQUEST_DEADLINE_SHARE
        decode_ms = sum(i.megapixels for i in inspected) * self.decode_ms_per_megapixel
        cost_s = (len(inspected) * ms_per_image + decode_ms) / 1000
        if cost_s > budget_s:
            per_image = ms_per_image + decode_ms / len(inspected)
            most = max(1, int(budget_s * 1000 / per_image))
            raise ClientError(400, f"{len(inspected)} images would take about {cost_s:.0f} s "
                                   f"here ({ms_per_image:.0f} ms each in the model, "
                                   f"{decode_ms:.0f} ms to decode), over "
                                   f"{REQUEST_DEADLINE_SHARE:.0%} of the {s.timeout_s} s "
                                   f"deadline; send at most {most} such images per request")

    def _decode_all(self, inspected: list[Inspected], geometry: Geometry, deadline: float,
                    observed: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """uint8 [n, crop, crop, 3] and each original's (width, height), each decoded under
        the worker's memory budget, the deadline checked before each.

        Raises:
            ClientError: 400 for an image that fails to decode.
            Overloaded: the deadline passed, or the memory stayed in use until it.
        """
        budget = self.budget
        arrays, sizes = [], []
        for i, image in enumerate(inspected):
            if time.monotonic() >= deadline:
                raise Overloaded(f"the invocation's deadline passed after {i} of its "
                                 f"{len(inspected)} images were decoded "
                                 f"(SAGEMAKER_MODEL_SERVER_TIMEOUT); send fewer or smaller "
                                 f"images", 1)
            if not self._decoders.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise Overloaded("the worker's decoders stayed busy until this invocation's "
                                 "deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT); retry", 1)
            try:
                budget.acquire(image.decode_bytes, deadline)
            except BaseException:
                self._decoders.release()
                raise
            start = time.monotonic()
            try:
                arrays.append(to_model_input(image, geometry))
                sizes.append(image.size)
            except BadImage as exc:
                observed["decode_failure"] = exc.kind
                raise ClientError(400, f"image {i}: {exc}" if len(inspected) > 1 else str(exc))
            finally:
                budget.release(image.decode_bytes)
                self._decoders.release()
                inspected[i] = None  # the lazy image holds its frame until it is dropped
                self._measured(image.megapixels, (time.monotonic() - start) * 1000)
                self._freed_bytes(image.decode_bytes)
        return np.stack(arrays), sizes

    def _measured(self, megapixels: float, ms: float) -> None:
        """Refine the decode cost per megapixel from one decode (large enough to measure)."""
        if megapixels >= 0.25:
            with self._lock:
                self.decode_ms_per_megapixel += DECODE_COST_SMOOTHING * (
                    ms / megapixels - self.decode_ms_per_megapixel)

    def _freed_bytes(self, n: int) -> None:
        """Count ``n`` freed bytes (when large); past ``TRIM_AFTER_BYTES``, give the heap's free
        pages back to the system (glibc's malloc_trim)."""
        if n < LARGE_FREE_BYTES:
            return  # small blocks are reused by the next requests; trimming has a cost
        with self._lock:
            self._freed += n
            if self._freed < TRIM_AFTER_BYTES:
                return
            self._freed = 0
        release_free_heap()


_libc = None


def release_free_heap() -> None:
    """Return the free pages of every malloc arena to the system (glibc ``malloc_trim(0)``;
    nothing on another C library). Large frames freed by request threads otherwise stay in
    their threads' arenas as resident memory."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
            _libc = _libc if _libc and hasattr(_libc, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
