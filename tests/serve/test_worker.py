"""serve/worker.py's stop, without a server: a stop the master started answers the connections
queued on the shared listener (tests/serve/test_drain.py has the real one); a worker that stops
on its own leaves them to its siblings."""

from __future__ import annotations

import socket
import sys
import types

import pytest
from gunicorn.workers.gthread import ThreadWorker

from serve import worker


def _worker(listener: socket.socket, nr: int = 0, max_requests: int = sys.maxsize):
    """A DrainingThreadWorker whose main loop has ended, with ``listener`` as its copy of the
    shared listening socket; ``accepted`` lists what it took from the queue."""
    w = object.__new__(worker.DrainingThreadWorker)
    w.alive, w.sockets, w.nr, w.max_requests, w.nr_conns = False, [listener], nr, max_requests, 0
    w.cfg = types.SimpleNamespace(backlog=64)
    w.log = types.SimpleNamespace(info=lambda *a: None)
    w.accepted = []

    def accept(sock):
        conn, _ = sock.accept()
        w.accepted.append(conn)
        w.nr_conns += 1

    w.accept = accept
    return w


@pytest.fixture
def queued(monkeypatch):
    """A listening socket shared as workers share it (a second copy: a sibling's, or the
    master's) with one connection queued, and gthread's own poller step stubbed."""
    monkeypatch.setattr(ThreadWorker, "set_accept_enabled", lambda self, enabled: None)
    monkeypatch.setattr(worker, "_on_its_own", worker.threading.Event())
    listener = socket.create_server(("127.0.0.1", 0))
    sibling = listener.dup()
    client = socket.create_connection(listener.getsockname())
    yield listener, sibling
    for sock in (client, sibling, listener):
        sock.close()


def test_a_stop_the_master_started_answers_the_queued_connections(queued):
    listener, sibling = queued
    w = _worker(listener)
    w.set_accept_enabled(False)
    assert len(w.accepted) == 1 and listener.fileno() == -1
    for conn in w.accepted:
        conn.close()


@pytest.mark.parametrize("why", ["its model stopped", "max_requests"])
def test_a_worker_stopping_on_its_own_leaves_the_queue_to_its_siblings(queued, why):
    listener, sibling = queued
    if why == "max_requests":
        w = _worker(listener, nr=1000, max_requests=1000)
    else:
        w = _worker(listener)
        worker.stopping_on_its_own()
    w.set_accept_enabled(False)
    assert w.accepted == [] and listener.fileno() == -1  # its copy closed, nothing taken
    sibling.settimeout(5)
    conn, _ = sibling.accept()  # still queued for a healthy worker
    conn.close()
