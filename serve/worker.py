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
with an empty queue. When the master lives on (a worker restarted after ``max_requests``, or one
whose model stopped, serve/lifecycle.py), closing the worker's copy changes nothing for clients:
the master's copy keeps the port open and the next worker accepts from the same queue.
"""

from __future__ import annotations

import select

from gunicorn.workers.gthread import ThreadWorker


class DrainingThreadWorker(ThreadWorker):
    """gthread, plus: on a graceful stop, serve the accept queue, then close the listeners."""

    _listeners_closed = False

    def set_accept_enabled(self, enabled: bool) -> None:
        """gunicorn calls this with False as its main loop ends (SIGTERM, max_requests) and
        when the worker is at ``worker_connections``; only the first is a stop."""
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive and not self._listeners_closed:
            self._listeners_closed = True
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
