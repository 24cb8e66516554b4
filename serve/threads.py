"""The OS names of a worker's threads (Linux's ``comm``: what ``top -H``, ``ps -L`` and
/proc/PID/task/TID/comm show), so the CPU each kind of thread uses can be read from outside the
process: ``serve-request`` (gunicorn's request threads: HTTP, decode, answer), ``serve-model``
(the batcher and the forward) and ``serve-load`` (loading and compiling). torch's intra-op
threads take the name of the thread that first ran a parallel region. Python 3.11 names only
its own thread objects, not the OS threads (benchmarks/bench_serve.py --stages reads these)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_PR_SET_NAME = 15  # <linux/prctl.h>
_named = threading.local()
_libc = None


def libc():
    """The C library as a ctypes handle, or None where it cannot be loaded."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    return _libc or None


def name_this_thread(name: str) -> None:
    """Give the calling thread the OS name ``name`` (Linux keeps 15 bytes; prctl PR_SET_NAME),
    once per thread; nothing where there is no prctl."""
    if getattr(_named, "name", None) == name:
        return
    _named.name = name
    c = libc()
    if c is not None and hasattr(c, "prctl"):
        c.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
