"""A worker's memory budget for decoded frames and request bodies (serve/invocation.py holds
one of each): a request waits for its share, within its deadline, instead of adding to the
others'."""

from __future__ import annotations

import threading
import time
from typing import Callable

from serve.errors import Overloaded


class MemoryBudget:
    """Bytes that a worker's request threads may hold in decoded frames at once: a decode waits
    (within its request's deadline) until its estimate fits, so concurrent large photos queue
    instead of adding up."""

    def __init__(self, total_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.clock = total_bytes, clock
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, deadline: float) -> None:
        """Hold ``n`` bytes (``n`` at most the total: the caller rejects larger requests).

        Raises:
            Overloaded: the bytes did not free up before ``deadline``.
        """
        with self._cond:
            while self._used + n > self.total:
                left = deadline - self.clock()
                if left <= 0:
                    raise Overloaded("the worker's decode memory stayed in use by other "
                                     "requests until this one's deadline; retry", 1,
                                     kind="decode_memory")
                self._cond.wait(left)
            self._used += n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes held by ``acquire`` and wake the decodes waiting for them."""
        with self._cond:
            self._used -= n
            self._cond.notify_all()
