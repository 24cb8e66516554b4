"""Reading a request's body within a deadline, so that a slow sender cannot hold a thread.

gunicorn's threaded worker reads a body with blocking reads that have no overall deadline: a
client sending one byte a second keeps a thread for as long as it likes, and /ping, which needs
a free thread, waits behind it. Nothing in gunicorn or Werkzeug bounds that (gunicorn bounds
only the wait for a request's first bytes and the drain of an unread body), so each worker
has one small watcher thread: when a body is not in by its deadline, the watcher shuts the
socket's reading side (``shutdown(SHUT_RD)``), the blocked read returns at once, and the request
is answered 408. The response is still written; the connection is not kept.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time

from serve.errors import BodyTimeout

logger = logging.getLogger("serve")

DRAIN_CHUNK_BYTES = 64 * 1024


class _Watch:
    __slots__ = ("sock", "expired", "done")

    def __init__(self, sock):
        self.sock, self.expired, self.done = sock, False, False


class BodyReader:
    """Reads request bodies (Flask requests behind gunicorn) within deadlines: one watcher
    thread per worker, started on first use."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._heap: list = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def read(self, request, deadline: float, started: float) -> bytes:
        """The whole body of ``request``, read by ``deadline`` (time.monotonic()).

        Raises:
            BodyTimeout: the body was not in by the deadline (the socket's reading side is shut,
                so the connection ends after the answer).
            werkzeug.exceptions.HTTPException: what Werkzeug raises (413 over the size limit,
                400 when the client disconnects).
        """
        watch = self._watch(request, deadline)
        try:
            data = request.get_data(cache=False)
        except Exception:
            if watch is not None and watch.expired:
                raise BodyTimeout(deadline - started) from None
            raise
        finally:
            self._unwatch(watch)
        if watch is not None and watch.expired and len(data) < (request.content_length or 0):
            raise BodyTimeout(deadline - started)
        return data

    def drain(self, request, seconds: float) -> None:
        """Read and discard what is left of a body that will not be used (a request refused
        before its body was read), for at most ``seconds``: a quick client's connection stays
        usable, a slow one's reading side is shut instead of holding this thread."""
        stream = request.environ.get("wsgi.input")
        if stream is None:
            return
        watch = self._watch(request, self.clock() + seconds)
        try:
            while stream.read(DRAIN_CHUNK_BYTES):
                pass
        except Exception:  # noqa: BLE001 - a client gone or cut off: nothing left to drain
            pass
        finally:
            self._unwatch(watch)

    # ------------------------------------------------------------------ the watcher
    def _watch(self, request, deadline: float) -> _Watch | None:
        sock = request.environ.get("gunicorn.socket")
        if sock is None:  # not behind gunicorn (a test client): nothing to bound
            return None
        watch = _Watch(sock)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="body-deadlines",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def _unwatch(self, watch: _Watch | None) -> None:
        if watch is not None:
            with self._cond:
                watch.done = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, watch = self._heap[0]
                left = deadline - self.clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                watch.expired = True
            try:
                watch.sock.shutdown(socket.SHUT_RD)
            except OSError:  # already closed
                pass
