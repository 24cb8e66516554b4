"""A dynamic batcher in each worker: requests decode in their own threads, one model thread runs
whatever is queued as one batch.

In the spirit of Triton's dynamic batcher (max batch size, max queue delay, a bounded queue with
per-request timeouts that reject) and TorchServe's batch_size / max_batch_delay, with one
difference: the model thread waits for more requests only while some are known to be on their
way (admitted and still decoding), never on a hunch, so a lone request runs at once and pays
nothing for batching. Under load, the requests that arrive while a batch runs form the next one.

On a GPU the model thread keeps two batches in flight (``launch``): while the device runs one, it
gathers, copies and queues the next, and only then waits for the first, so the device never
idles while the host assembles a batch. On a CPU the forward runs on the thread itself and a
batch is answered before the next is formed.

The model thread is the worker's only torch caller, so its health is the worker's: when it dies,
or when a batch fails and a blank image fails after it (the device or the program is broken,
not the batch), the scheduler is ``failed``; every request it holds fails at once, /ping stops
answering 200 and ``on_fatal`` ends the worker, so gunicorn starts a fresh one.

Every request has a deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT): one that cannot be served in time
fails with ``Overloaded`` (a 503 with Retry-After), never a hang:
- at admission, when the worker already holds ``max_queue`` requests, or when the images queued
  ahead of it would take past its deadline at the measured cost per image;
- in the queue, when its deadline passes before its batch starts;
- while its batch runs, when the deadline passes first (the request stops waiting).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from serve.errors import ModelFailed, Overloaded
from serve.threads import name_this_thread

logger = logging.getLogger(__name__)

# Weight of the newest batch in the running estimate of the cost of one image.
COST_SMOOTHING = 0.2




@dataclass(eq=False)  # a job is itself: compared by identity, never by its arrays
class Job:
    """One request's images (uint8 [n, crop, crop, 3]) on their way through the model. After it
    ran: ``result`` float32 [n, classes], the size of the batch(es) it ran in, and its queue wait
    and compute time (ms)."""

    images: np.ndarray
    deadline: float
    enqueued: float = 0.0
    result: np.ndarray | None = None
    error: BaseException | None = None
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    abandoned: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Batches jobs for ``forward`` (uint8 [N, H, W, 3] -> float32 [N, classes]) on one thread.

    Args:
        forward: the model; called on the scheduler's thread only.
        max_batch_size: images per forward at most.
        max_batch_delay_s: how long a batch may wait for requests still decoding.
        max_queue: requests a worker holds at once (decoding, queued or running).
        ms_per_image: first estimate of the cost of an image (the warm-up's), refined from
            every batch.
        probe: a batch that must succeed on a healthy model (blank images), run after a batch
            fails; None skips the check.
        on_fatal: called once, with the reason, when the model thread dies or the probe fails.
        clock: seconds, monotonic (tests inject one).
        launch: an asynchronous model (a GPU's): ``launch(parts)`` starts the batch made of the
            arrays ``parts`` and returns a function that waits for its probabilities. With it
            the model thread keeps two batches in flight; without it, it runs ``forward``.
    """

    on_queue = staticmethod(lambda depth: None)  # hears the jobs waiting: serve/prometheus.py

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], max_batch_size: int,
                 max_batch_delay_s: float, max_queue: int, ms_per_image: float,
                 probe: np.ndarray | None = None, on_fatal: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 launch: Callable[[list[np.ndarray]], Callable[[], np.ndarray]] | None = None):
        self.forward, self.clock, self.launch, self.probe = forward, clock, launch, probe
        self.on_fatal = on_fatal
        self.failure: str | None = None  # why the model thread stopped for good
        self.max_batch_size, self.max_batch_delay_s = max_batch_size, max_batch_delay_s
        self.max_queue, self.ms_per_image = max_queue, ms_per_image
        self._queue: deque[Job] = deque()
        self._queued_images, self._running_images = 0, 0  # images queued, in taken batches
        self._admitted, self._decoding = 0, 0  # requests admitted, unfinished; not yet submitted
        self._running: list[Job] = []  # the jobs of the batches the model thread has taken
        self._last_done = 0.0  # when the model thread last finished a batch (clock)
        self._cond = threading.Condition()
        self._closed = False
        self._tasks: deque[Callable[[], None]] = deque()  # run on the model thread (``between``)
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request threads
    def admit(self, images: int, deadline: float) -> None:
        """Reserve a place for a request of ``images`` images before it decodes; pair it with
        exactly one ``submit`` or ``release``.

        Raises:
            Overloaded: ``max_queue`` requests are in the worker already, or the work queued
                ahead would not end before ``deadline``.
            ModelFailed: the model thread stopped for good.
        """
        with self._cond:
            if self.failure is not None:
                raise ModelFailed(self.failure)
            ahead_s = self._backlog_s(images)
            if self._admitted >= self.max_queue:
                raise Overloaded(f"the worker holds {self._admitted} requests, its queue's bound "
                                 f"(SAGEMAKER_MODEL_SERVER_MAX_QUEUE); retry", ahead_s,
                                 kind="queue_full")
            if self.clock() + ahead_s > deadline:
                raise Overloaded(f"about {ahead_s:.1f} s of work is queued ahead, past this "
                                 f"request's deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT); retry",
                                 ahead_s, kind="backlog")
            self._admitted += 1
            self._decoding += 1

    def release(self) -> None:
        """Give back an admitted place that will not be submitted (the request failed)."""
        with self._cond:
            self._admitted -= 1
            self._decoding -= 1
            self._cond.notify_all()

    def submit(self, images: np.ndarray, deadline: float) -> Job:
        """Queue an admitted request's decoded images (uint8 [n, H, W, 3]).

        Raises:
            ModelFailed: the model thread stopped for good (the place is given back).
        """
        job = Job(images=images, deadline=deadline, enqueued=self.clock())
        with self._cond:
            self._decoding -= 1
            if self.failure is not None:
                self._admitted -= 1
                raise ModelFailed(self.failure)
            self._queue.append(job)
            self._queued_images += len(images)
            self.on_queue(len(self._queue))
            self._cond.notify_all()
        return job

    def wait(self, job: Job) -> np.ndarray:
        """The job's probabilities, float32 [n, classes], once its batch ran.

        Raises:
            Overloaded: the deadline passed first.
            Exception: what the model raised on the batch.
        """
        try:
            if not job.done.wait(max(job.deadline - self.clock(), 0.0)):
                job.abandoned = True
                raise Overloaded("the invocation did not finish within its deadline "
                                 "(SAGEMAKER_MODEL_SERVER_TIMEOUT); retry", self._backlog_s(0))
            if job.error is not None:
                raise job.error
            return job.result
        finally:
            with self._cond:
                self._admitted -= 1

    def _backlog_s(self, extra_images: int) -> float:
        """Seconds until ``extra_images`` more would be done, at the current cost per image."""
        images = self._queued_images + self._running_images + extra_images
        return images * self.ms_per_image / 1000.0

    @property
    def healthy(self) -> bool:
        """Whether the model thread is alive and serving."""
        return self.failure is None and self._thread.is_alive()

    def stats(self) -> dict:
        """What the worker holds now: admitted requests, queued images, ms per image."""
        with self._cond:
            return {"admitted": self._admitted, "queued_images": self._queued_images,
                    "ms_per_image": self.ms_per_image}

    def between(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the model thread before its next batch (at once when idle): a change
        of the model (a compiled program taking over) then never meets a batch halfway. A task
        that raises is logged; the thread goes on."""
        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    # ------------------------------------------------------------------ the model thread
    def close(self) -> None:
        """Stop the model thread: it takes no more batches (worker exit)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take_batch(self, wait: bool = True) -> list[Job]:
        """Run the tasks handed to ``between``; wait for work, then for more while requests are
        still decoding (up to the delay since the first job queued) and the batch is not full;
        take up to max_batch_size images of whole jobs (a larger job alone). Expired and
        abandoned jobs are failed, not run. With ``wait`` False (a batch is in flight), take
        only what is queued now, at once (nothing: [])."""
        while True:
            self._run_tasks()
            with self._cond:
                while not self._queue and not self._closed and not self._tasks and wait:
                    self._cond.wait()
                if self._tasks and not self._closed:
                    continue
                if self._closed or not self._queue:
                    return []
                until = self._queue[0].enqueued + self.max_batch_delay_s
                while (wait and self._queued_images < self.max_batch_size and self._decoding > 0
                       and self.clock() < until and not self._closed):
                    self._cond.wait(timeout=until - self.clock())
                batch, images, now = [], 0, self.clock()
                while self._queue:
                    job = self._queue[0]
                    n = len(job.images)
                    if batch and images + n > self.max_batch_size:
                        break
                    self._queue.popleft()
                    self._queued_images -= n
                    if job.abandoned or now >= job.deadline:
                        job.error = Overloaded("the invocation's deadline passed while it was "
                                               "queued (SAGEMAKER_MODEL_SERVER_TIMEOUT); retry",
                                               self._backlog_s(0))
                        job.done.set()
                        continue
                    job.queue_ms = (now - job.enqueued) * 1000.0
                    batch.append(job)
                    images += n
                self.on_queue(len(self._queue))
                if batch:
                    self._running_images += images
                    self._running = self._running + batch
                    return batch
                if not wait:
                    return []

    def _run_tasks(self) -> None:
        while True:
            with self._cond:
                if not self._tasks:
                    return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:  # noqa: BLE001 - a task's failure is its own, not the model's
                logger.exception("a task on the model thread failed")

    def _run(self) -> None:
        name_this_thread("serve-model")  # torch's intra-op threads started here inherit it
        try:
            if self.launch is None:
                while True:
                    batch = self._take_batch()
                    if not batch:
                        return
                    self._finish(self._start(batch))
            in_flight = None
            while True:
                batch = self._take_batch(wait=in_flight is None)
                started = self._start(batch) if batch else None
                if in_flight is not None:
                    self._finish(in_flight)
                elif started is None:
                    return  # closed
                in_flight = started
        except BaseException as exc:  # noqa: BLE001 - anything here is the thread's end
            self._fail(f"the model thread stopped: {type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        finally:
            if self.failure is None and not self._closed:
                self._fail("the model thread stopped")

    def _start(self, batch: list[Job]) -> "_Started":
        """Start ``batch``: launched on an asynchronous model, run on a synchronous one (in
        chunks of max_batch_size images: a request larger than that alone is run so on either)."""
        started = _Started(batch, sum(len(job.images) for job in batch), self.clock())
        try:
            if self.launch is not None and started.images <= self.max_batch_size:
                started.collect = self.launch([job.images for job in batch])
            else:
                images = np.concatenate([job.images for job in batch])
                chunks = [self.forward(images[i:i + self.max_batch_size])
                          for i in range(0, started.images, self.max_batch_size)]
                started.result = np.concatenate(chunks)
        except Exception as exc:  # noqa: BLE001 - the requests answer it; the thread lives
            started.error = exc
        return started

    def _finish(self, started: "_Started") -> None:
        """Wait for a started batch, answer its jobs and refine the cost per image; after a
        failed batch, probe the model with blank images."""
        batch, n_images = started.batch, started.images
        if started.error is None and started.collect is not None:
            try:
                started.result = started.collect()
            except Exception as exc:  # noqa: BLE001 - as in _start
                started.error = exc
        result, error = started.result, started.error
        if error is not None:
            logger.error("the model failed on a batch of %d images", n_images,
                         exc_info=(type(error), error, error.__traceback__))
        now = self.clock()
        compute_ms = (now - started.at) * 1000.0
        # With two batches in flight the device works on this one only once the previous one
        # is done: its cost is the time since then.
        busy_ms = (now - max(started.at, self._last_done)) * 1000.0
        self._last_done = now
        with self._cond:
            self._running_images -= n_images
            self._running = [job for job in self._running if job not in batch]
            if error is None and n_images >= min(self.max_batch_size, 2):
                cost = busy_ms / n_images
                self.ms_per_image += COST_SMOOTHING * (cost - self.ms_per_image)
        offset = 0
        for job in batch:
            n = len(job.images)
            if error is None:
                job.result = result[offset:offset + n]
            job.error = error
            job.batch_size = min(n_images, self.max_batch_size)
            job.compute_ms = compute_ms
            offset += n
            job.done.set()
        if error is not None and self.probe is not None:
            try:
                self.forward(self.probe)
            except Exception as exc:  # noqa: BLE001
                self._fail(f"the model fails on blank images too, so the device or the program "
                           f"is broken: {type(exc).__name__}: {exc}")
                raise _Stopped from None

    def _fail(self, reason: str) -> None:
        """Stop for good: fail every request queued or in the batch taken, refuse new ones, and
        tell ``on_fatal``."""
        with self._cond:
            if self.failure is not None:
                return
            self.failure = reason
            self._closed = True
            held = self._running + list(self._queue)
            self._queue, self._running, self._queued_images = deque(), [], 0
            self._cond.notify_all()
        logger.error("%s; the worker stops serving", reason)
        for job in held:
            if not job.done.is_set():
                job.error = ModelFailed(reason)
                job.done.set()
        if self.on_fatal is not None:
            self.on_fatal(reason)


class _Stopped(Exception):
    """Ends the model thread after ``_fail`` (already reported)."""


@dataclass
class _Started:
    """A batch the model thread has started: its jobs, their image count, when it started
    (clock), and its result, its error, or the function that waits for its result."""

    batch: list[Job]
    images: int
    at: float
    result: np.ndarray | None = None
    error: BaseException | None = None
    collect: Callable[[], np.ndarray] | None = None
