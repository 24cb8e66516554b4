"""The errors a request can end in, each with the HTTP answer it becomes (serve/app.py's
handlers): one place for the types that the body reader, the decoder, the scheduler and the
answers raise, so a module catching one need not import the module that raises it."""

from __future__ import annotations

import math


class ClientError(Exception):
    """A request the server cannot serve; becomes ``status`` with a JSON reason (and a
    Retry-After header when ``retry_after_s`` is set). ``kind`` names a 413's or a 503's cause
    for the metrics, from serve.prometheus.REFUSAL_REASONS (the reason is free text)."""

    def __init__(self, status: int, reason: str, retry_after_s: int | None = None,
                 kind: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s
        self.kind = kind


class BodyTimeout(Exception):
    """The body did not arrive by its deadline (``seconds`` after the request started)."""

    def __init__(self, seconds: float):
        super().__init__(f"the request body did not arrive within {seconds:.0f} s")
        self.seconds = seconds


class BadImage(ValueError):
    """The bytes are not an image we can use; the message says why (for a 400 answer) and
    ``kind`` names the failure for the metrics: empty, not_an_image, corrupt, too_large,
    too_many_pixels or resize_too_large."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


class ModelFailed(RuntimeError):
    """The worker's model thread stopped for good (the message says why); the worker is being
    replaced."""


class Overloaded(Exception):
    """The request cannot be served within its deadline or the queue's bound; ``retry_after_s``
    is a fair wait before trying again (the Retry-After header); ``kind`` names the cause for
    the metrics (serve.prometheus.REFUSAL_REASONS)."""

    def __init__(self, reason: str, retry_after_s: float, kind: str = "deadline"):
        super().__init__(reason)
        self.reason, self.kind = reason, kind
        self.retry_after_s = max(1, math.ceil(retry_after_s))
