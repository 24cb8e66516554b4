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
import logging
import threading
import time

from serve import jsonlines
from serve.answers import load_json, options, predictions
from serve.budget import MemoryBudget
from serve.config import Settings
from serve.errors import ClientError, Overloaded
from serve.jsonlines import JSONLINES_TYPES
from serve.lifecycle import ModelHolder
from serve.pipeline import ImagePipeline
from serve.record import Invocation
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
    """Serves ``/invocations`` for one worker: the places its invocations take, the memory its
    bodies share, and its image pipeline (serve/pipeline.py)."""

    def __init__(self, settings: Settings, holder: ModelHolder):
        self.settings = settings
        self.pipeline = ImagePipeline(settings, holder)
        self.body_memory = MemoryBudget(settings.body_memory_bytes)
        self._places = threading.BoundedSemaphore(settings.max_queue)

    def handle(self, inv: Invocation) -> dict | bytes:
        """The JSON answer (a JSON Lines body: its bytes) to the invocation ``inv``, which must
        be answered by ``inv.deadline``; fills its record (serve/record.py) as it goes.

        Raises:
            ClientError: 4xx (or 503 while the model is missing or still loading).
            serve.errors.BodyTimeout: the body did not arrive in time (408).
            serve.errors.Overloaded: 503, the request cannot be served by its deadline.
            serve.errors.ModelFailed: 503, the worker's model stopped for good.
        """
        request = inv.request
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
                             f"(SAGEMAKER_MODEL_SERVER_MAX_QUEUE); retry", 1, kind="queue_full")
        try:
            return self._serve(inv)
        finally:
            self._places.release()

    def _serve(self, inv: Invocation) -> dict | bytes:
        kind = body_kind(inv.request.mimetype)
        held = self._hold_body_memory(inv.request, kind, min(
            inv.deadline, inv.started + self.settings.body_timeout_s))
        try:
            if kind == "jsonlines":
                return jsonlines.serve(self.pipeline, inv)
            return self._serve_images(inv)
        finally:
            self.body_memory.release(held)

    def _serve_images(self, inv: Invocation) -> dict:
        s, pipeline, request = self.settings, self.pipeline, inv.request
        data = pipeline.read_body(inv)
        classifier, scheduler = pipeline.ready_model(inv.deadline)
        bodies, doc = image_bodies(request.mimetype, data, s.max_images_per_request)
        body_bytes, data = len(data), None
        inv.fields["images"] = len(bodies)
        k, want_all = options(doc, request.headers.get(CUSTOM_ATTRIBUTES, ""), request.args,
                              len(classifier.classes))
        several = len(bodies) > 1
        inspected = [pipeline.inspect(body, classifier.geometry, f"image {i}: " if several
                                      else "", inv) for i, body in enumerate(bodies)]
        pipeline.check_cost(len(inspected), sum(i.megapixels for i in inspected),
                            scheduler.ms_per_image)
        scheduler.admit(len(bodies), inv.deadline)
        decode_start = time.monotonic()
        try:
            images, sizes = pipeline.decode_all(inspected, classifier.geometry, inv)
        except BaseException:
            scheduler.release()
            raise
        finally:
            pipeline.freed_bytes(body_bytes)
        inv.add_ms("decode_ms", (time.monotonic() - decode_start) * 1000)
        job = scheduler.submit(images, inv.deadline)
        probabilities = scheduler.wait(job)
        inv.ran(job)
        pipeline.observe(images, sizes, probabilities, inv)
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
                                   f"(SERVE_BODY_MEMORY_MB)", kind="body_memory")
        try:
            self.body_memory.acquire(n, deadline)
        except Overloaded:
            raise Overloaded("the worker's body memory stayed in use by other requests until "
                             "this one's deadline (SERVE_BODY_MEMORY_MB); retry", 1,
                             kind="body_memory") from None
        return n
