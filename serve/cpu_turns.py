"""Decodes and the forward take turns on a CPU worker's cores instead of sharing them.

The forward runs on ``threads_per_worker`` intra-op threads, one per core, and each of its
operators ends in a barrier: when a request thread decoding a JPEG takes one of those cores,
the other intra-op threads wait at the barrier (spinning, so the wait costs CPU too) for the one
that lost its core (what that costs and what the turns buy: benchmarks/README.md, "Where the
cores go"). Here the forward waits, for a bounded time, until
the decodes that are running or waiting are done, then holds the cores; decodes that arrive
meanwhile wait for it to end. No library offers this: the ones that batch (TorchServe, Triton)
decode in other processes or leave the cores to the operating system.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from serve.errors import Overloaded


class CpuTurns:
    """The turns of one worker's decodes and forwards.

    ``wait_s`` bounds how long a forward waits for decodes to finish before it takes the cores
    (then new decodes wait for it): the batch delay, so a stream of decodes cannot hold the
    model back longer than a batch may wait for its images anyway.
    """

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic):
        self.wait_s, self.clock = wait_s, clock
        self._cond = threading.Condition()
        self._decoding = 0  # decodes running or waiting for their turn
        self._forward = False  # a forward holds the cores

    @contextmanager
    def decode(self, deadline: float) -> Iterator[None]:
        """Decode in this block once no forward holds the cores (at once when none does).

        Raises:
            Overloaded: a forward still held them at ``deadline`` (time.monotonic() s).
        """
        with self._cond:
            self._decoding += 1
            while self._forward:
                left = deadline - self.clock()
                if left <= 0:
                    self._decoding -= 1
                    self._cond.notify_all()
                    raise Overloaded("the model held the worker's cores until this "
                                     "invocation's deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT); "
                                     "retry", 1)
                self._cond.wait(left)
        try:
            yield
        finally:
            with self._cond:
                self._decoding -= 1
                self._cond.notify_all()

    def forward(self, run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray],
                                                                          np.ndarray]:
        """``run`` (a forward: images uint8 [N, crop, crop, 3] to probabilities float32
        [N, classes]) taking its turn: it waits up to ``wait_s`` for the decodes to finish,
        then holds the cores while it runs."""
        def turn(images: np.ndarray) -> np.ndarray:
            with self._cond:
                until = self.clock() + self.wait_s
                while self._decoding and self.clock() < until:
                    self._cond.wait(until - self.clock())
                self._forward = True
            try:
                return run(images)
            finally:
                with self._cond:
                    self._forward = False
                    self._cond.notify_all()
        return turn
