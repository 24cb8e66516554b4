"""The gunicorn worker class serve runs: gunicorn's gthread worker, which on a graceful stop also
answers the connections waiting in its listener's accept queue, then closes its listener.

Why: gunicorn's gthread worker (27.0.1), once SIGTERM ends its main loop, stops polling its
listener but keeps it open until it exits, after the requests in flight and a 2 s keep-alive
linger. On SIGTERM to the master, the master closes its own copy of the listening socket first,
so the worker's copy is the last one: every connection the kernel completes meanwhile (a client
that sent its photo right after its previous answer) waits in a queue nobody reads, and is reset
when the worker exits. Clients see "connection reset" for requests they had sent, with nothing in
the server's log; SageMaker's router would have retried a refused connection on another
instance, but cannot know whether a reset POST was processed (gunicorn#3397, #3612).

This worker, as its main loop ends, accepts what is already queued (each connection is served as
usual, answered with ``Connection: close``) and then closes its listener, so a connection made
later is refused at once (when no other process holds the listener: the master closed its copy,
and each worker closes its own as it stops). A connection that arrives in the microseconds
between the last accept and the close is still reset: Linux cannot close a listener atomically
with an empty queue.

Only a stop the master started drains: a worker that stops on its own while the master lives on
(its model stopped, serve/lifecycle.py, which calls ``stopping_on_its_own`` first; or a restart
after ``max_requests``) only closes its copy of the listener. The connections queued there are
the whole server's: a healthy sibling, or the worker that replaces this one, serves them, where
this worker would answer them 503.
"""

from __future__ import annotations

import select
import threading

from gunicorn.workers.gthread import ThreadWorker

_on_its_own = threading.Event()  # this worker process is stopping by its own decision


def stopping_on_its_own() -> None:
    """Say, before this worker sends itself SIGTERM, that the stop is its own: the master and
    its siblings go on, so the queued connections are left to them (see the module docstring)."""
    _on_its_own.set()


class DrainingThreadWorker(ThreadWorker):
    """gthread, plus: on a graceful stop, serve the accept queue, then close the listeners."""

    _listeners_closed = False

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn calls this with False as its main loop ends (SIGTERM, max_requests) and
        when the worker is at ``worker_connections``; only the first is a stop."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive and not self._listeners_closed:
            self._listeners_closed = True
            restarting = bool(self.max_requests) and self.nr >= self.max_requests
            if _on_its_own.is_set() or restarting:
                for listener in self.sockets:
                    listener.close()
                self.log.info("stopping on its own: listener closed; queued connections are "
                              "left to the other workers")
            else:
                self.accept_queued_then_close()

    def accept_queued_then_close(self) -> int:
        """Accept every connection waiting on this worker's listeners (each goes to the thread
        pool, as in gthread's own loop), then close them; returns how many were accepted."""
        accepted = 0
        for listener in self.sockets:
            listener.setblocking(False)
            queued = select.poll()
            queued.register(listener.fileno(), select.POLLIN)
            # Readable while a completed connection is queued; gthread's accept() takes one and
            # ignores EAGAIN and ECONNABORTED (a client that left). At most a full queue's worth
            # (``backlog``), so clients that keep connecting cannot hold the stop.
            for _ in range(self.cfg.backlog):
                if not queued.poll(0):
                    break
                before = self.nr_conns
                self.accept(listener)
                accepted += self.nr_conns - before
            listener.close()
        self.log.info("stopping: listener closed; %d connection(s) that were waiting to be "
                      "accepted are answered", accepted)
        return accepted
