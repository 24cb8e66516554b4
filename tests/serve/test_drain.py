"""SIGTERM to the real gunicorn master, as SageMaker sends it when an update or a scale-in
retires an instance: every connection the server accepted gets its answer (requests in flight,
a kept-alive connection's next request, connections the kernel had queued), new connections are
refused only once the listener is closed, and the server is gone well within the 30 s before
SageMaker's SIGKILL.

The worker is stopped (SIGSTOP) while connections queue up and the master handles SIGTERM, so
that the queue the worker finds when it resumes is the same on every machine."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from tests.conftest import DOG_PHOTOS, start_server, untrained_artifact
from tests.helpers.serving import call, save_artifact

pytestmark = pytest.mark.model

KILL_AFTER_S = 30  # SageMaker's SIGKILL after SIGTERM


def request_bytes(host: str, photo: bytes) -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n").encode() + photo


def read_answer(sock: socket.socket):
    """(status, JSON body) of the response on ``sock``, or the error's name."""
    response = b""
    try:
        while chunk := sock.recv(65536):
            response += chunk
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()
    if not response:
        return "closed without an answer"
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


class Reader(threading.Thread):
    """Reads the answer on ``sock`` as it comes (``answer``), as each client does: a client
    that reads another socket first would hold gunicorn's close of this one (gthread closes
    gracefully, waiting up to 2 s for the client to close)."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock, self.answer = sock, None
        self.start()

    def run(self):
        self.answer = read_answer(self.sock)


def top_k(answer) -> list:
    return [(t["label"], round(t["probability"], 4)) for t in answer[1]["predictions"][0]["top_k"]]


class Prober(threading.Thread):
    """Opens a new connection every 20 ms and sends the photo until told to stop: each attempt
    is ``refused`` or its answer (or the error that ended it)."""

    def __init__(self, host: str, port: int, photo: bytes):
        super().__init__(daemon=True)
        self.address, self.photo, self.results = (host, port), photo, []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                sock = socket.create_connection(self.address, timeout=30)
            except ConnectionRefusedError:
                self.results.append("refused")
            else:
                try:
                    sock.sendall(request_bytes(self.address[0], self.photo))
                    self.results.append(read_answer(sock))
                except OSError as exc:
                    self.results.append(type(exc).__name__)
            self.halt.wait(0.02)


def test_sigterm_answers_every_accepted_request_and_refuses_only_after_the_listener_closes(
        tmp_path):
    model_dir = untrained_artifact(tmp_path / "model", num_classes=10)
    server = start_server(model_dir, tmp_path / "serve.log",
                          env={"SERVE_COMPILE": "off", "SERVE_METRICS": "off"})
    (worker,) = server.worker_pids()
    stopped = False
    try:
        photo = DOG_PHOTOS[0].read_bytes()
        host, port = server.url.removeprefix("http://").split(":")
        port = int(port)
        status, body, _ = call(server.url + "/invocations", photo, {"Content-Type": "image/jpeg"})
        assert status == 200
        reference = top_k((status, body))

        # In flight: requests whose bodies are half sent, in the worker's threads.
        in_flight = [socket.create_connection((host, port), timeout=30) for _ in range(4)]
        for sock in in_flight:
            sock.sendall(request_bytes(host, photo)[:2000])
        # Kept alive: a connection idle after one answer, whose client sends the next request
        # right after SIGTERM (SageMaker's front end reuses connections).
        kept = http.client.HTTPConnection(host, port, timeout=30)
        kept.request("POST", "/invocations", photo, {"Content-Type": "image/jpeg"})
        first = kept.getresponse()
        assert first.status == 200 and first.getheader("Connection") != "close"
        first.read()
        time.sleep(0.5)

        # Queued: connections the kernel completes while the worker cannot accept them.
        os.kill(worker, signal.SIGSTOP)
        stopped = True
        queued = [socket.create_connection((host, port), timeout=30) for _ in range(8)]
        for sock in queued:
            sock.sendall(request_bytes(host, photo))
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "Handling signal: term" not in server.log and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the master has closed its copy of the listener and signalled the worker
        # Still accepted (queued) while the worker holds its listener open.
        late = socket.create_connection((host, port), timeout=30)
        late.sendall(request_bytes(host, photo))
        queued.append(late)

        os.kill(worker, signal.SIGCONT)
        stopped = False
        readers = [Reader(sock) for sock in queued]
        prober = Prober(host, port, photo)
        prober.start()
        kept.request("POST", "/invocations", photo, {"Content-Type": "image/jpeg"})
        for sock in in_flight:
            sock.sendall(request_bytes(host, photo)[2000:])
            readers.append(Reader(sock))
        second = kept.getresponse()
        kept_answer = (second.status, json.loads(second.read()))
        kept_closes = second.getheader("Connection")
        kept.close()
        for reader in readers:
            reader.join(KILL_AFTER_S)
        answers = [reader.answer for reader in readers]
        code = server.proc.wait(timeout=KILL_AFTER_S)
        stopped_in = time.monotonic() - start
        prober.halt.set()
        prober.join(40)
    finally:
        if stopped:
            os.kill(worker, signal.SIGCONT)
        server.stop()

    probes = ["refused" if p == "refused" else p[0] if isinstance(p, tuple) else p
              for p in prober.results]
    save_artifact("sigterm-drain.json", {
        "in_flight": len(in_flight), "queued": len(queued), "kept_alive": 1,
        "answered": sum(isinstance(a, tuple) and a[0] == 200 for a in answers + [kept_answer]),
        "probes": {str(s): probes.count(s) for s in set(probes)},
        "seconds_from_sigterm_to_exit": round(stopped_in, 2)})
    assert code == 0 and stopped_in < KILL_AFTER_S
    for answer in answers + [kept_answer]:
        assert isinstance(answer, tuple) and answer[0] == 200, answer
        assert top_k(answer) == reference
    assert kept_closes == "close"  # the client knows not to send another request on it
    # The worker's loop may accept one as it wakes; the rest wait in the queue it drains.
    drained = re.search(r"listener closed; (\d+) connection\(s\) that were waiting", server.log)
    assert drained and int(drained.group(1)) >= len(queued) - 1, server.log[-2000:]
    # Every attempt after SIGCONT was answered or refused, none reset or dropped; the refusals
    # start once (when the listener is closed) and last until the master has exited.
    assert set(probes) <= {200, "refused"}, probes
    assert "refused" in probes and 200 not in probes[probes.index("refused"):], probes
    for result in prober.results:
        if isinstance(result, tuple):
            assert top_k(result) == reference
