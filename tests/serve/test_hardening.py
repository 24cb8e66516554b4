"""The server under the worst inputs and faults, each through the real gunicorn process: memory
that holds under the worst image of every decode path at once, /ping within SageMaker's 2 s in
every state, faults that reach /ping and end the worker, slow senders that cannot hold it."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import DOG_PHOTOS, ROOT, Server, free_port, start_server
from tests.helpers.serving import call, load, predict, save_artifact

pytestmark = pytest.mark.model

PING_LIMIT_MS = 2000  # SageMaker's bound on a /ping answer


def status(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def only_worker(server: Server) -> int:
    (pid,) = server.worker_pids()
    return pid


class Pinger(threading.Thread):
    """GET /ping every ``every`` s until stopped; keeps (status or error, ms) of each."""

    def __init__(self, url: str, every: float = 0.2):
        super().__init__(daemon=True)
        self.url, self.every, self.results = url, every, []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            start = time.perf_counter()
            try:
                status_, _, _ = call(self.url + "/ping", method="GET", timeout=10)
            except OSError as exc:
                status_ = type(exc).__name__
            self.results.append((status_, (time.perf_counter() - start) * 1000))
            self._halt.wait(self.every)

    def stop(self) -> list:
        self._halt.set()
        self.join(15)
        return self.results


def assert_pings_fast(pings: list, name: str) -> None:
    assert len(pings) >= 5, pings
    worst = max(ms for _, ms in pings)
    save_artifact(f"ping-{name}.json", {"pings": len(pings), "ping_ms_max": round(worst, 1),
                                        "statuses": sorted({str(s) for s, _ in pings})})
    assert all(isinstance(s, int) for s, _ in pings), pings  # answered, never refused or dropped
    assert worst < PING_LIMIT_MS, pings


# ------------------------------------------------------------------ memory
def test_the_worst_image_of_every_path_at_once_stays_within_the_memory_bound(
        tmp_path, trained_model_dir, worst_images):
    """Every worst case, twice and all at once, plus a JSON request of eight: the worker's peak
    RSS stays within idle + 1.5 GB, and its RSS settles within 300 MB of idle afterwards."""
    cases = worst_images
    s = start_server(trained_model_dir, tmp_path / "serve.log")
    try:
        pid = only_worker(s)
        for _ in range(3):
            assert predict(s)[0] == 200
        idle = status(pid, "VmRSS")
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        grey16 = base64.b64encode(cases["16-bit grey PNG"][0]).decode()
        requests = [(body, {"Content-Type": ctype}) for body, ctype in cases.values()] * 2
        requests.append((json.dumps({"instances": [{"b64": grey16}] * 8}).encode(),
                         {"Content-Type": "application/json"}))
        answers: list = [None] * len(requests)

        def send(i):
            answers[i] = call(s.url + "/invocations", *requests[i], timeout=120)[:2]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        peak = status(pid, "VmHWM") - idle
        named = dict(zip(list(cases) * 2 + ["json"], answers))
        assert named["60 MB of PNG text"][0] == 400
        assert named["lossless WebP"][0] == 413  # its decode alone is over the budget
        assert "SERVE_DECODE_MEMORY_MB" in named["lossless WebP"][1]["reason"]
        others = {n: a[0] for n, a in named.items() if n not in ("60 MB of PNG text",
                                                                 "lossless WebP")}
        assert set(others.values()) == {200}, named
        time.sleep(1.0)
        settled = status(pid, "VmRSS") - idle
        save_artifact("worst-images-memory.json", {
            "requests": len(requests), "idle_rss_mb": round(idle / 2**20),
            "peak_over_idle_mb": round(peak / 2**20), "settled_over_idle_mb": round(settled / 2**20)})
        assert peak <= 1.5 * 2**30, peak / 2**20
        assert settled <= 300 * 2**20, settled / 2**20
        assert predict(s)[0] == 200 and only_worker(s) == pid
    finally:
        s.stop()


# ------------------------------------------------------------------ /ping in every state
def test_ping_answers_within_2_s_while_the_model_loads_and_compiles(tmp_path, trained_model_dir):
    # On a store of its own: the worker loads its eager program while a helper compiles.
    s = start_server(trained_model_dir, tmp_path / "serve.log", wait_ready=0,
                     env={"SERVE_COMPILE": "on", "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "2",
                          "SERVE_COMPILE_CACHE_DIR": str(tmp_path / "compiled")})
    pinger = Pinger(s.url, every=0.1)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the port opens as the master starts
            try:
                call(s.url + "/ping", method="GET", timeout=2)
                break
            except OSError:
                time.sleep(0.05)
        pinger.start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(st == 200 for st, _ in pinger.results):
            time.sleep(0.2)
        pings = pinger.stop()
        assert pings[0][0] == 503 and pings[-1][0] == 200, pings  # loading, then ready
        assert_pings_fast(pings, "while-loading")
    finally:
        pinger.stop()
        s.stop()


def test_ping_answers_within_2_s_while_a_worker_respawns_with_64_invocations_waiting(
        tmp_path, trained_model_dir):
    s = start_server(trained_model_dir, tmp_path / "serve.log")
    try:
        victim = only_worker(s)
        outcome = {}
        loader = threading.Thread(target=lambda: outcome.update(statuses=load(s.url, 12, 64)))
        pinger = Pinger(s.url)
        loader.start()
        time.sleep(2.0)
        os.kill(victim, signal.SIGKILL)
        pinger.start()
        loader.join()
        pings = pinger.stop()
        assert only_worker(s) != victim
        assert_pings_fast(pings, "while-respawning")
        statuses = outcome["statuses"]
        assert 200 in statuses[-50:], statuses  # the new worker serves
    finally:
        s.stop()


def _slow_sender(url: str, body: bytes, out: list, index: int, seconds: float) -> None:
    """Sends the headers, then the body a byte a second, then reads the answer."""
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall((f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                          f"image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n").encode())
            stop_at = time.monotonic() + seconds
            for byte in body:
                if time.monotonic() > stop_at:
                    break
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the server shut its reading side
                time.sleep(1.0)
            response = sock.recv(65536)
        out[index] = int(response.split(b" ", 2)[1]) if response else "closed"
    except OSError as exc:
        out[index] = type(exc).__name__


def test_32_clients_sending_a_byte_a_second_hold_neither_ping_nor_the_worker(tmp_path,
                                                                              trained_model_dir):
    s = start_server(trained_model_dir, tmp_path / "serve.log",
                     env={"SERVE_BODY_TIMEOUT_S": "6"})
    try:
        body = DOG_PHOTOS[0].read_bytes()
        slow: list = [None] * 32
        senders = [threading.Thread(target=_slow_sender, args=(s.url, body, slow, i, 20))
                   for i in range(32)]
        for t in senders:
            t.start()
        time.sleep(1.5)
        pinger = Pinger(s.url)
        pinger.start()
        during = predict(s)  # every place is held by a slow sender: refused at once
        for t in senders:
            t.join(40)
        pings = pinger.stop()
        assert_pings_fast(pings, "under-slow-senders")
        assert all(st == 200 for st, _ in pings), pings
        assert during[0] == 503 and "SAGEMAKER_MODEL_SERVER_MAX_QUEUE" in during[1]["reason"]
        assert slow.count(408) >= 30, slow  # each body's deadline ended it
        assert predict(s)[0] == 200
    finally:
        s.stop()


# ------------------------------------------------------------------ faults reach /ping
def start_faulty_server(model_dir: Path, log_path: Path, fault: str, flag: Path) -> Server:
    """The real gunicorn configuration with tests.serve.faulty_app's app."""
    port = free_port()
    env = dict(os.environ, SM_MODEL_DIR=str(model_dir), SAGEMAKER_BIND_TO_PORT=str(port),
               SAGEMAKER_MODEL_SERVER_WORKERS="1", PYTHONUNBUFFERED="1", SERVE_COMPILE="off",
               SERVE_TEST_FAULT=fault, SERVE_TEST_FAULT_FLAG=str(flag))
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config",
                             "python:serve.gunicorn_conf", "tests.serve.faulty_app:create_app()"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if call(server.url + "/ping", method="GET", timeout=2)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"faulty server not ready:\n{server.log[-3000:]}")


@pytest.mark.parametrize("fault", ["model-thread", "device"])
def test_a_dead_model_thread_or_a_broken_device_stops_ping_and_the_worker_is_replaced(
        tmp_path, trained_model_dir, fault):
    flag = tmp_path / "fault-on"
    s = start_faulty_server(trained_model_dir, tmp_path / "serve.log", fault, flag)
    try:
        first = only_worker(s)
        flag.touch()
        status_, out, _ = predict(s)
        assert status_ in (500, 503), out
        pings = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                pings.append(call(s.url + "/ping", method="GET", timeout=2)[0])
            except OSError:
                pings.append("refused")
            if s.worker_pids() and first not in s.worker_pids():
                break
            time.sleep(0.1)
        flag.unlink()
        assert 200 not in pings, pings  # never healthy once the fault struck
        assert first not in s.worker_pids(), s.log[-3000:]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and call(s.url + "/ping", method="GET")[0] != 200:
            time.sleep(0.2)
        assert predict(s)[0] == 200
        assert "exits so that gunicorn replaces it" in s.log
    finally:
        s.stop()
