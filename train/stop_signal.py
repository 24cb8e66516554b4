"""The stop signal of a training process: SIGTERM and SIGINT turned into a request that the
training reads, bounded by a watchdog; what the loop then does with the request is
train/stop_protocol.py's.

SageMaker sends SIGTERM on StopTrainingJob, on a managed spot interruption and when
MaxRuntimeInSeconds is reached, and SIGKILL 120 s after it; the API reference
(``StoppingCondition``) names that window as the time to save the model. ``container/train``
runs as PID 1 in the container, and the kernel drops a signal whose action is the default for
PID 1: without a handler a stop did nothing and the job trained on.

``install()`` turns SIGTERM and SIGINT into a request that the training loop reads between
steps (``requested()``): the current step finishes, a checkpoint and a model are written, and the
job fails with a reason that says so. A watchdog bounds the whole stop: ``STOP_DEADLINE_S``
after the first signal it writes the failure file and ends the process, so a stop that hangs
(a stuck data loader, a slow disk) still ends before SIGKILL, keeping what was written
atomically before it. Work that a stop may cut short (the optional passes after the model is
written, train/export/post_training.py) iterates through ``checked()``, which raises
``StopRequested`` at the next item once a stop is requested. This module imports nothing heavy
(no torch): the entry program installs it first.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SageMaker's SIGKILL comes 120 s after SIGTERM; the rest is margin for the process's exit and
# the toolkit's own end (failure file, exit code).
STOP_DEADLINE_S = 100.0


class _State:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self.event = threading.Event()
        self.disarmed = threading.Event()  # the watchdog ends nothing once set
        self.installed = False
        self.on_deadline: Callable[[str], None] | None = None
        self.on_signal: Callable[[int], None] | None = None
        self.deadline_s = STOP_DEADLINE_S


_state = _State()


def requested() -> bool:
    """True once SIGTERM or SIGINT arrived (or ``request()`` was called)."""
    return _state.event.is_set()


def signal_name() -> str | None:
    """"SIGTERM" or "SIGINT": what asked for the stop (None before one)."""
    return _state.signal_name


def seconds_since() -> float:
    """Seconds since the stop was requested (0.0 before one)."""
    return 0.0 if _state.at is None else time.monotonic() - _state.at


class StopRequested(Exception):
    """A stop was requested while work iterated through ``checked()``: that work is abandoned."""


class _Checked:
    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        if requested():
            raise StopRequested(f"stopped by {signal_name()}")
        for item in self.iterable:
            if requested():
                raise StopRequested(f"stopped by {signal_name()}")
            yield item


def checked(iterable: Iterable) -> Iterable:
    """``iterable``'s items (re-iterable when ``iterable`` is), but each pass over them raises
    ``StopRequested`` before it starts and before each item once a stop is requested: a pass
    over batches ends within a batch of the signal."""
    return _Checked(iterable)


def request(name: str = "SIGTERM") -> None:
    """Ask for a stop as a signal would (the first request wins; later ones are ignored)."""
    if _state.event.is_set():
        return
    _state.signal_name, _state.at = name, time.monotonic()
    _state.event.set()
    # The handler runs between two bytecodes of the main thread, which may be inside a write to
    # stderr; the watchdog thread logs instead, and arms the deadline.
    threading.Thread(target=_watchdog, args=(_state,), name="stop-watchdog", daemon=True).start()


def _handler(signum: int, frame) -> None:
    first = not _state.event.is_set()
    request(signal.Signals(signum).name)
    if first and _state.on_signal is not None:
        _state.on_signal(signum)


def _watchdog(st: _State) -> None:
    logger.warning("%s received: finishing the current step, then writing a checkpoint and the "
                   "model (at most %.0f s)", st.signal_name, st.deadline_s)
    if st.disarmed.wait(max(st.deadline_s - (time.monotonic() - st.at), 0.0)):
        return
    reason = (f"stopped by {st.signal_name}, but the stop did not finish within "
              f"{st.deadline_s:.0f} s; the newest complete checkpoint and model are kept")
    logger.error(reason)
    if st.on_deadline is not None:
        try:
            st.on_deadline(reason)
        except Exception:  # noqa: BLE001 - ending the process matters more
            logger.exception("could not record the stop")
    sys.stderr.flush()
    os._exit(1)


def install(on_deadline: Callable[[str], None] | None = None,
            on_signal: Callable[[int], None] | None = None,
            deadline_s: float = STOP_DEADLINE_S) -> None:
    """Handle SIGTERM and SIGINT from now on (call it from the main thread; again to change the
    callbacks).

    Args:
        on_deadline: called with a reason just before the watchdog ends the process (write the
            failure file there).
        on_signal: called in the main thread on the first signal (a launcher forwards it to its
            children there).
        deadline_s: seconds from the first signal to the watchdog's end of the process.
    """
    _state.on_deadline, _state.on_signal, _state.deadline_s = on_deadline, on_signal, deadline_s
    if not _state.installed:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _handler)
        _state.installed = True


def reset() -> None:
    """Forget a stop request and disarm its watchdog (tests that stop and resume in one
    process)."""
    global _state
    _state.disarmed.set()
    callbacks = (_state.on_deadline, _state.on_signal, _state.deadline_s, _state.installed)
    _state = _State()
    _state.on_deadline, _state.on_signal, _state.deadline_s, _state.installed = callbacks
