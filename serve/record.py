"""The record of one invocation while it is served: what the handler, the image path and the
JSON Lines path (serve/invocation.py, serve/jsonlines.py) write into as they go, and what the
app reads when the answer leaves (serve/app.py: the access log, the metrics, the drain of an
unread body)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# The access log's timings, summed over the batches of a JSON Lines request: wall times, and the
# request thread's CPU time in its decodes and in all (``cpu_ms``: body, decode, answer).
TIMINGS_MS = ("decode_ms", "queue_ms", "compute_ms", "decode_cpu_ms", "cpu_ms")


@dataclass
class Invocation:
    """One request to the server.

    ``request`` is the Flask request, ``started`` and ``deadline`` are time.monotonic() seconds,
    ``cpu_started`` the request thread's time.thread_time() seconds when it arrived.
    ``fields`` are the access log's fields beyond the HTTP ones (images, lines, line_errors,
    batch_size, and ``TIMINGS_MS`` in ms); ``confidences`` the top-1 probabilities of the images
    answered, for the metrics; ``decode_failure`` the kind of the first image that failed to
    decode (serve.errors.BadImage.kind); ``body_read`` whether the whole body is in (a refusal
    before it drains the body first); ``refusal`` the kind of a 413 or 503 answer
    (serve.prometheus.REFUSAL_REASONS).
    """

    request: Any
    started: float
    deadline: float
    fields: dict = field(default_factory=dict)
    confidences: list[float] = field(default_factory=list)
    decode_failure: str | None = None
    body_read: bool = False
    refusal: str | None = None
    cpu_started: float = field(default_factory=time.thread_time)

    def failed_decode(self, kind: str) -> None:
        """Note an image that failed to decode; the first failure's kind is the one counted."""
        if self.decode_failure is None:
            self.decode_failure = kind

    def add_ms(self, name: str, ms: float) -> None:
        """Add ``ms`` to the timing ``name`` (one of ``TIMINGS_MS``)."""
        self.fields[name] = self.fields.get(name, 0.0) + ms

    def ran(self, job) -> None:
        """Note a batch job that answered some of this invocation's images
        (serve.scheduler's job: its batch_size, queue_ms and compute_ms)."""
        self.fields["batch_size"] = max(self.fields.get("batch_size", 0), job.batch_size)
        self.add_ms("queue_ms", job.queue_ms)
        self.add_ms("compute_ms", job.compute_ms)

    def finished_cpu(self) -> None:
        """Note the request thread's CPU time since the invocation arrived (``cpu_ms``); call
        it on that thread as the answer leaves."""
        self.fields["cpu_ms"] = (time.thread_time() - self.cpu_started) * 1000

    def log_fields(self) -> dict:
        """The fields for the access log and the metrics, timings rounded to 0.01 ms."""
        return {k: round(v, 2) if k in TIMINGS_MS else v for k, v in self.fields.items()}
