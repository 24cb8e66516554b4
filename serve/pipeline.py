"""The steps every image of an invocation goes through, shared by the image and JSON requests
(serve/invocation.py) and the JSON Lines requests (serve/jsonlines.py): the body read by its
deadline, the model waited for, the image's header inspected before it is decoded, the
request's cost set against its share of the deadline, the decode under the worker's memory
budget, and what the answers say about the images (metrics, drift).

One ``ImagePipeline`` per worker holds what its request threads share: the body reader, the
decode memory budget, the decoders' places and the decode cost they measure.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import numpy as np

from contract.preprocess import Geometry
from serve.answers import check_deadline
from serve.body import BodyReader
from serve.budget import MemoryBudget
from serve.config import REQUEST_DEADLINE_SHARE, Settings
from serve.decode import Inspected, inspect, to_model_input
from serve.errors import BadImage, ClientError, ModelFailed, Overloaded
from serve.lifecycle import ModelHolder
from serve.record import Invocation
from serve.threads import libc

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


class ImagePipeline:
    """A worker's image steps: its settings, its model holder, the memory budget its request
    threads share for decoded frames, its decoders and the decode cost they measure."""

    def __init__(self, settings: Settings, holder: ModelHolder):
        self.settings, self.holder = settings, holder
        self.budget = MemoryBudget(settings.decode_memory_bytes)
        self.bodies = BodyReader()
        # Decodes at once: one per core the worker has (at least 2, so one slow image never
        # holds the rest). More would only share the cores and finish together, later, so
        # batches would form from images that all waited.
        self._decoders = threading.BoundedSemaphore(max(2, settings.threads_per_worker))
        self._lock = threading.Lock()
        self.decode_ms_per_megapixel = DECODE_MS_PER_MEGAPIXEL
        self._freed = 0  # bytes freed since the heap was last trimmed

    def read_body(self, inv: Invocation) -> bytes:
        """The whole body, read by its own deadline (SERVE_BODY_TIMEOUT_S) and the
        invocation's; marks ``inv.body_read``.

        Raises:
            serve.errors.BodyTimeout: the body did not arrive in time.
        """
        data = self.bodies.read(inv.request, min(inv.deadline, inv.started
                                                 + self.settings.body_timeout_s), inv.started)
        inv.body_read = True
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
            raise ClientError(503, holder.status(), retry_after_s=None if holder.failed else 1,
                              kind="model_unavailable" if holder.failed or holder.error
                              else "model_loading")
        if not holder.healthy():
            raise ModelFailed(holder.status())
        return holder.classifier, holder.scheduler

    def inspect(self, body: bytes, geometry: Geometry, label: str, inv: Invocation
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
            inv.failed_decode(exc.kind)
            raise ClientError(400, f"{label}{exc}") from None
        if inspected.decode_bytes > self.budget.total:
            raise ClientError(413, f"{label}decoding the image takes about "
                                   f"{inspected.decode_bytes / 2**20:.0f} MB; the limit is "
                                   f"{self.budget.total / 2**20:.0f} MB (SERVE_DECODE_MEMORY_MB)",
                              kind="decode_memory")
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

    def decode_all(self, inspected: list[Inspected], geometry: Geometry, inv: Invocation
                   ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """uint8 [n, crop, crop, 3] and each original's (width, height), the deadline checked
        before each; the list's images are dropped as they are decoded.

        Raises:
            ClientError: 400 for an image that fails to decode.
            Overloaded: the deadline passed, or the memory stayed in use until it.
        """
        arrays, sizes = [], []
        for i, image in enumerate(inspected):
            check_deadline(inv.deadline, i, len(inspected), "images",
                           "; send fewer or smaller images")
            try:
                arrays.append(self.decode(image, geometry, inv))
                sizes.append(image.size)
            except BadImage as exc:
                inv.failed_decode(exc.kind)
                raise ClientError(400, f"image {i}: {exc}" if len(inspected) > 1 else str(exc))
            finally:
                inspected[i] = None  # the lazy image holds its frame until it is dropped
        return np.stack(arrays), sizes

    def decode(self, image: Inspected, geometry: Geometry, inv: Invocation) -> np.ndarray:
        """One inspected image's model input, uint8 [crop, crop, 3], decoded by one of the
        worker's decoders under its memory budget before ``inv``'s deadline; the decode's CPU
        time (this thread's) is added to ``inv``'s ``decode_cpu_ms``.

        Raises:
            serve.errors.BadImage: the image fails to decode.
            Overloaded: the decoders or the memory stayed in use until the deadline.
        """
        turns = self.holder.turns
        with turns.decode(inv.deadline) if turns is not None else nullcontext():
            return self._decode(image, geometry, inv)

    def _decode(self, image: Inspected, geometry: Geometry, inv: Invocation) -> np.ndarray:
        deadline = inv.deadline
        if not self._decoders.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise Overloaded("the worker's decoders stayed busy until this invocation's "
                             "deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT); retry", 1)
        try:
            self.budget.acquire(image.decode_bytes, deadline)
        except BaseException:
            self._decoders.release()
            raise
        start, cpu_start = time.monotonic(), time.thread_time()
        try:
            return to_model_input(image, geometry)
        finally:
            inv.add_ms("decode_cpu_ms", (time.thread_time() - cpu_start) * 1000)
            self.budget.release(image.decode_bytes)
            self._decoders.release()
            self._measured(image.megapixels, (time.monotonic() - start) * 1000)
            self.freed_bytes(image.decode_bytes)

    def observe(self, images: np.ndarray, sizes: list[tuple[int, int]],
                probabilities: np.ndarray, inv: Invocation) -> None:
        """Record what the model answered for decoded ``images`` (uint8 [n, crop, crop, 3]) of
        original ``sizes``: their top-1 probabilities in ``inv`` for the metrics, and their
        statistics for the drift scores."""
        top = probabilities.argmax(1)
        confidences = probabilities[np.arange(len(top)), top].tolist()
        inv.confidences.extend(confidences)
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


def release_free_heap() -> None:
    """Return the free pages of every malloc arena to the system (glibc ``malloc_trim(0)``;
    nothing on another C library). Large frames freed by request threads otherwise stay in
    their threads' arenas as resident memory."""
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):
        c.malloc_trim(0)
