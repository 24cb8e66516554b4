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
- ``application/jsonlines``: one ``{"b64": ...}`` record a line, answered one line each
  (serve/jsonlines.py): what a batch transform job sends with SplitType Line.
Options (``k``, ``probabilities``), predictions and errors: serve/answers.py. Before its body is
read, an invocation reserves what the body and its parsed copies will hold in the worker's body
memory (SERVE_BODY_MEMORY_MB), so the large payloads of batch transform and asynchronous
endpoints wait their turn instead of adding up.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import logging
import threading
import time

import numpy as np

from contract.preprocess import Geometry
from serve import jsonlines
from serve.answers import check_deadline, load_json, options, predictions
from serve.body import BodyReader
from serve.config import REQUEST_DEADLINE_SHARE, Settings
from serve.decode import Inspected, inspect, to_model_input
from serve.jsonlines import JSONLINES_TYPES
from serve.lifecycle import ModelHolder
from serve.budget import MemoryBudget
from serve.errors import BadImage, ClientError, ModelFailed, Overloaded
from serve.settings_table import BODY_COPIES

logger = logging.getLogger("serve")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
CONTENT_TYPES = IMAGE_TYPES + (JSON_TYPE,) + JSONLINES_TYPES
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
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


def body_kind(mimetype: str) -> str:
    """``json``, ``jsonlines`` or ``image``: how a body of this content type is read."""
    if mimetype == JSON_TYPE:
        return "json"
    return "jsonlines" if mimetype in JSONLINES_TYPES else "image"


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
    doc = load_json(data, "the JSON body")
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


class InvocationHandler:
    """Serves ``/invocations`` for one worker: its settings, its model holder, the places its
    invocations take, the memory budget its request threads share and the decode cost they
    measure."""

    def __init__(self, settings: Settings, holder: ModelHolder):
        self.settings, self.holder = settings, holder
        self.budget = MemoryBudget(settings.decode_memory_bytes)
        self.body_memory = MemoryBudget(settings.body_memory_bytes)
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
               observed: dict) -> dict | bytes:
        """The JSON answer (a JSON Lines body: its bytes) to a Flask ``request`` that arrived
        at ``started`` and must be answered by ``deadline`` (time.monotonic()); fills ``log``
        (images, decode, batch, queue and compute ms) for the access log, and ``observed`` for
        the metrics (``confidences`` of its images, or the first ``decode_failure`` kind) and
        the app (``body_read`` once the body is in).

        Raises:
            ClientError: 4xx (or 503 while the model is missing or still loading).
            serve.errors.BodyTimeout: the body did not arrive in time (408).
            serve.errors.Overloaded: 503, the request cannot be served by ``deadline``.
            serve.errors.ModelFailed: 503, the worker's model stopped for good.
        """
        if request.mimetype not in CONTENT_TYPES:
            raise ClientError(415, f"Content-Type {request.mimetype or '(none)'!r} is not "
                                   f"supported; use one of {', '.join(CONTENT_TYPES)}")
        # No Accept header means anything goes (RFC 9110 12.5.1).
        answers = JSONLINES_TYPES if request.mimetype in JSONLINES_TYPES else (JSON_TYPE,)
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(
                answers) is None:
            raise ClientError(406, f"Accept: {request.headers.get('Accept')!r} cannot be served; "
                                   f"responses to {request.mimetype} are {answers[0]}")
        s = self.settings
        if not self._places.acquire(blocking=False):
            raise Overloaded(f"the worker holds {s.max_queue} invocations, its bound "
                             f"(SAGEMAKER_MODEL_SERVER_MAX_QUEUE); retry", 1)
        try:
            return self._serve(request, started, deadline, log, observed)
        finally:
            self._places.release()

    def _serve(self, request, started: float, deadline: float, log: dict, observed: dict
               ) -> dict | bytes:
        s = self.settings
        kind = body_kind(request.mimetype)
        held = self._hold_body_memory(request, kind, min(deadline, started + s.body_timeout_s))
        try:
            if kind == "jsonlines":
                return jsonlines.serve(self, request, started, deadline, log, observed)
            return self._serve_images(request, started, deadline, log, observed)
        finally:
            self.body_memory.release(held)

    def _serve_images(self, request, started: float, deadline: float, log: dict,
                      observed: dict) -> dict:
        s = self.settings
        data = self.read_body(request, started, deadline, observed)
        classifier, scheduler = self.ready_model(deadline)
        bodies, doc = image_bodies(request.mimetype, data, s.max_images_per_request)
        body_bytes, data = len(data), None
        log["images"] = len(bodies)
        k, want_all = options(doc, request.headers.get(CUSTOM_ATTRIBUTES, ""), request.args,
                              len(classifier.classes))
        several = len(bodies) > 1
        inspected = [self.inspect_one(body, classifier.geometry, f"image {i}: " if several
                                      else "", observed) for i, body in enumerate(bodies)]
        self.check_cost(len(inspected), sum(i.megapixels for i in inspected),
                        scheduler.ms_per_image)
        scheduler.admit(len(bodies), deadline)
        decode_start = time.monotonic()
        try:
            images, sizes = self._decode_all(inspected, classifier.geometry, deadline, observed)
        except BaseException:
            scheduler.release()
            raise
        finally:
            self.freed_bytes(body_bytes)
        log["decode_ms"] = round((time.monotonic() - decode_start) * 1000, 2)
        job = scheduler.submit(images, deadline)
        probabilities = scheduler.wait(job)
        log.update(batch_size=job.batch_size, queue_ms=round(job.queue_ms, 2),
                   compute_ms=round(job.compute_ms, 2))
        self.observe(images, sizes, probabilities, observed)
        return {"model_version": classifier.version,
                "predictions": predictions(probabilities, classifier.classes, k, want_all)}

    def _hold_body_memory(self, request, kind: str, deadline: float) -> int:
        """Reserve in the worker's body memory what the body and its parsed copies hold (its
        Content-Length, or the payload cap when it sends none, times ``BODY_COPIES[kind]``),
        waiting for room until ``deadline``; returns the bytes held.

        Raises:
            ClientError: 413 for a body whose copies alone are over SERVE_BODY_MEMORY_MB.
            Overloaded: the memory stayed in use by other bodies until the deadline.
        """
        s = self.settings
        length = request.content_length
        size = s.max_payload_bytes if length is None else min(length, s.max_payload_bytes)
        n = size * BODY_COPIES[kind]
        if n > self.body_memory.total:
            raise ClientError(413, f"a {size:,}-byte {request.mimetype} body holds about "
                                   f"{n / 2**20:.0f} MB while it is read and parsed; the limit "
                                   f"is {self.body_memory.total / 2**20:.0f} MB "
                                   f"(SERVE_BODY_MEMORY_MB)")
        try:
            self.body_memory.acquire(n, deadline)
        except Overloaded:
            raise Overloaded("the worker's body memory stayed in use by other requests until "
                             "this one's deadline (SERVE_BODY_MEMORY_MB); retry", 1) from None
        return n

    def read_body(self, request, started: float, deadline: float, observed: dict) -> bytes:
        """The whole body, read by its own deadline (SERVE_BODY_TIMEOUT_S) and the
        invocation's; marks ``observed["body_read"]``.

        Raises:
            serve.errors.BodyTimeout: the body did not arrive in time.
        """
        data = self.bodies.read(request, min(deadline, started + self.settings.body_timeout_s),
                                started)
        observed["body_read"] = True
        return data

    def ready_model(self, deadline: float):
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

    def inspect_one(self, body: bytes, geometry: Geometry, label: str, observed: dict
                    ) -> Inspected:
        """An image's header (pixel limits, decode memory), before it is decoded; ``label``
        (``image 3: ``) starts the reason of a refusal.

        Raises:
            ClientError: 400 for a bad image, 413 for one whose decode alone is over the
                worker's decode memory.
        """
        s = self.settings
        try:
            inspected = inspect(body, geometry, s.max_pixels, s.max_resized_pixels)
        except BadImage as exc:
            observed.setdefault("decode_failure", exc.kind)
            raise ClientError(400, f"{label}{exc}") from None
        if inspected.decode_bytes > self.budget.total:
            raise ClientError(413, f"{label}decoding the image takes about "
                                   f"{inspected.decode_bytes / 2**20:.0f} MB; the limit is "
                                   f"{self.budget.total / 2**20:.0f} MB (SERVE_DECODE_MEMORY_MB)")
        return inspected

    def check_cost(self, count: int, megapixels: float, ms_per_image: float,
                   what: str = "images", fix: str = "") -> None:
        """``count`` images (of ``megapixels`` in all) against their share of the deadline: the
        model's measured cost per image plus the decode's measured cost per megapixel.

        Raises:
            ClientError: 400 naming how many such images fit (``what``: the unit named, ``fix``:
                what to change besides).
        """
        s = self.settings
        budget_s = s.timeout_s * REQUEST_DEADLINE_SHARE
        decode_ms = megapixels * self.decode_ms_per_megapixel
        cost_s = (count * ms_per_image + decode_ms) / 1000
        if cost_s > budget_s:
            per_image = ms_per_image + decode_ms / count
            most = max(1, int(budget_s * 1000 / per_image))
            raise ClientError(400, f"{count} {what} would take about {cost_s:.0f} s here "
                                   f"({ms_per_image:.0f} ms each in the model, {decode_ms:.0f} "
                                   f"ms to decode), over {REQUEST_DEADLINE_SHARE:.0%} of the "
                                   f"{s.timeout_s} s deadline; send at most {most} such "
                                   f"{what} per request{fix}")

    def _decode_all(self, inspected: list[Inspected], geometry: Geometry, deadline: float,
                    observed: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """uint8 [n, crop, crop, 3] and each original's (width, height), the deadline checked
        before each.

        Raises:
            ClientError: 400 for an image that fails to decode.
            Overloaded: the deadline passed, or the memory stayed in use until it.
        """
        arrays, sizes = [], []
        for i, image in enumerate(inspected):
            check_deadline(deadline, i, len(inspected), "images",
                           "; send fewer or smaller images")
            try:
                arrays.append(self.decode_one(image, geometry, deadline))
                sizes.append(image.size)
            except BadImage as exc:
                observed.setdefault("decode_failure", exc.kind)
                raise ClientError(400, f"image {i}: {exc}" if len(inspected) > 1 else str(exc))
            finally:
                inspected[i] = None  # the lazy image holds its frame until it is dropped
        return np.stack(arrays), sizes

    def decode_one(self, image: Inspected, geometry: Geometry, deadline: float) -> np.ndarray:
        """One inspected image's model input, uint8 [crop, crop, 3], decoded by one of the
        worker's decoders under its memory budget.

        Raises:
            serve.errors.BadImage: the image fails to decode.
            Overloaded: the decoders or the memory stayed in use until the deadline.
        """
        if not self._decoders.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise Overloaded("the worker's decoders stayed busy until this invocation's "
                             "deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT); retry", 1)
        try:
            self.budget.acquire(image.decode_bytes, deadline)
        except BaseException:
            self._decoders.release()
            raise
        start = time.monotonic()
        try:
            return to_model_input(image, geometry)
        finally:
            self.budget.release(image.decode_bytes)
            self._decoders.release()
            self._measured(image.megapixels, (time.monotonic() - start) * 1000)
            self.freed_bytes(image.decode_bytes)

    def observe(self, images: np.ndarray, sizes: list[tuple[int, int]],
                probabilities: np.ndarray, observed: dict) -> None:
        """Record what the model answered for decoded ``images`` (uint8 [n, crop, crop, 3]) of
        original ``sizes``: their top-1 probabilities for the metrics (``observed``), and their
        statistics for the drift scores."""
        top = probabilities.argmax(1)
        confidences = probabilities[np.arange(len(top)), top].tolist()
        observed.setdefault("confidences", []).extend(confidences)
        drift = self.holder.drift
        if drift is not None:
            for image, (width, height), cls, conf in zip(images, sizes, top, confidences):
                drift.add(int(cls), conf, float(image.mean()), width / height,
                          width * height / 1e6)

    def _measured(self, megapixels: float, ms: float) -> None:
        """Refine the decode cost per megapixel from one decode (large enough to measure)."""
        if megapixels >= 0.25:
            with self._lock:
                self.decode_ms_per_megapixel += DECODE_COST_SMOOTHING * (
                    ms / megapixels - self.decode_ms_per_megapixel)

    def freed_bytes(self, n: int) -> None:
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
