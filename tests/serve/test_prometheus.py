"""GET /metrics: Prometheus text that parses, names that follow Prometheus' conventions, 413s and
503s counted by a reason from a fixed set, and, under gunicorn with two workers, the same totals
whichever worker a scrape lands on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from serve.app import create_app
from serve.config import Settings
from serve.prometheus import PREFIX, REFUSAL_REASONS, PrometheusMetrics, program_labels
from serve.record import Invocation
from tests.conftest import ARTIFACTS, DOG_PHOTOS, ROOT, start_server, untrained_artifact
from tests.helpers.serving import call

# Prometheus' "Metric and label naming": a unit suffix in base units, _total on counters.
UNITS = ("_seconds", "_bytes", "_total", "_info", "_size", "_depth", "_in_flight")


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def _app_without_model(tmp_path, monkeypatch, **env):
    """The real app with an empty model dir: every invocation is a 503 at once (no model is
    loaded, none is needed)."""
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SERVE_METRICS", "off")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return create_app(Settings.from_env(gpus=0), torch.device("cpu"))


def test_metrics_parse_follow_the_naming_rules_and_count_413s_and_503s_by_reason(
        tmp_path, monkeypatch):
    client = _app_without_model(tmp_path, monkeypatch).test_client()
    too_large = client.post("/invocations", data=b"x" * (2 * 2**20), content_type="image/jpeg")
    assert too_large.status_code == 413
    no_model = client.post("/invocations", data=b"x", content_type="image/png")
    assert no_model.status_code == 503
    client.post("/nowhere/12345", data=b"x", content_type="text/whatever")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    found = families(text)
    for name, family in found.items():
        assert name.startswith(PREFIX), name
        assert "_ms" not in name and "milli" not in name, name  # base units only
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        if family.type in ("histogram", "gauge"):
            assert name.endswith(UNITS), name
    assert not any(name.endswith("_created") for name in found)
    refusals = {(s.labels["status"], s.labels["reason"]): s.value
                for s in samples(text, f"{PREFIX}refusals_total")}
    assert refusals == {("413", "payload"): 1, ("503", "model_unavailable"): 1}
    requests = {(s.labels["route"], s.labels["status"], s.labels["content_type"]): s.value
                for s in samples(text, f"{PREFIX}requests_total")}
    # An unknown path and content type count as "other": no series per client's text.
    assert requests == {("/invocations", "413", "image/jpeg"): 1,
                        ("/invocations", "503", "image/png"): 1, ("other", "404", "other"): 1}
    assert samples(text, f"{PREFIX}invocation_seconds_count")[0].value == 2
    assert samples(text, f"{PREFIX}requests_in_flight")[0].value == 0


def test_the_request_threads_cpu_time_is_counted_by_stage():
    metrics = PrometheusMetrics()
    inv = Invocation(None, 0.0, 1.0, fields={"cpu_ms": 5.0, "decode_cpu_ms": 3.0})
    metrics.finished("/invocations", 200, "image/jpeg", 0.01, inv)
    text = metrics.exposition().decode()
    got = {s.labels["stage"]: s.value for s in samples(text, f"{PREFIX}request_cpu_seconds_total")}
    assert got == pytest.approx({"decode": 0.003, "other": 0.002})


def test_a_refusal_reason_outside_the_fixed_set_counts_as_other():
    metrics = PrometheusMetrics()
    inv = Invocation(None, 0.0, 1.0, refusal="the worker holds 12 invocations; retry")
    metrics.finished("/invocations", 503, "image/jpeg", 0.01, inv)
    text = metrics.exposition().decode()
    assert [(s.labels["reason"], s.value) for s in samples(text, f"{PREFIX}refusals_total")] \
        == [("other", 1)]
    assert "other" in REFUSAL_REASONS


def test_what_a_worker_runs_while_it_compiles_and_after():
    metrics = PrometheusMetrics()
    metrics.model_changed("v1", {"precision": "int8", "compiled_batch_sizes": [1],
                                 "eager_precision": "fp32", "compiling_batch_sizes": [2, 4]})
    metrics.model_changed("v1", {"precision": "int8", "compiled_batch_sizes": [1, 2, 4]})
    info = {(s.labels["program"], s.labels["fallback"]): s.value
            for s in samples(metrics.exposition().decode(), f"{PREFIX}model_info")}
    assert info == {("compiling", "fp32"): 0, ("compiled", "none"): 1}
    assert program_labels({"precision": "fp32", "compiled_batch_sizes": [],
                           "eager_precision": "fp32"}) == \
        {"precision": "fp32", "program": "eager", "fallback": "none"}


def test_metrics_can_be_turned_off(tmp_path, monkeypatch):
    client = _app_without_model(tmp_path, monkeypatch, SERVE_PROMETHEUS="off").test_client()
    assert client.get("/metrics").status_code == 404


# Two processes record into one folder, as two gunicorn workers do; a third adds them up.
MULTIPROCESS = """
import os, sys
from serve.prometheus import MasterMetrics, PrometheusMetrics
from serve.record import Invocation
metrics = PrometheusMetrics()
if sys.argv[1] == "record":
    for _ in range(int(sys.argv[2])):
        metrics.finished("/invocations", 200, "image/jpeg", 0.05,
                         Invocation(None, 0.0, 1.0, fields={"decode_ms": 2.0, "batch_size": 4}))
    metrics.queue_changed(3)
    print(os.getpid())
else:
    if sys.argv[1] == "dead":
        MasterMetrics.exited(int(sys.argv[2]))
    sys.stdout.write(metrics.exposition().decode())
"""


def test_workers_metrics_add_up_in_multiprocess_mode_and_a_dead_one_leaves_its_gauges(
        tmp_path):
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=str(ROOT))

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", MULTIPROCESS, *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=True)

    recorders = [int(run("record", str(n)).stdout) for n in (3, 4)]
    text = run("scrape").stdout
    total = sum(s.value for s in samples(text, f"{PREFIX}requests_total"))
    assert total == 7
    assert samples(text, f"{PREFIX}decode_seconds_count")[0].value == 7
    # Both recorders have exited but nothing said so: their live gauges still add up.
    assert samples(text, f"{PREFIX}queue_depth")[0].value == 6
    assert {f"gauge_livesum_{pid}.db" for pid in recorders} <= set(os.listdir(tmp_path))
    text = run("dead", str(recorders[0])).stdout
    assert samples(text, f"{PREFIX}queue_depth")[0].value == 3
    assert sum(s.value for s in samples(text, f"{PREFIX}requests_total")) == 7  # counters stay


# ------------------------------------------------------------------ a real server, two workers
def _scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def _invocations_total(text: str) -> float:
    return sum(s.value for s in samples(text, f"{PREFIX}requests_total")
               if s.labels["route"] == "/invocations")


def _half_sent_invocation(url: str, photo: bytes) -> socket.socket:
    """An invocation whose body is half sent: in flight in one worker until the rest comes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n".encode()
                 + photo[:len(photo) // 2])
    return sock


@pytest.mark.model
def test_two_workers_give_the_same_totals_and_metrics_answer_while_invocations_wait(tmp_path):
    """24 invocations, then one held in flight by its body: every scrape, whichever worker
    answers it, counts all of them, shows both workers' state, and answers while invocations
    are in flight; a worker killed leaves its counts and takes its live gauges away."""
    model = untrained_artifact(tmp_path / "model", 3)
    server = start_server(model, tmp_path / "serve.log", env={
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SERVE_COMPILE": "off", "SERVE_METRICS": "off"})
    try:
        photo = DOG_PHOTOS[0].read_bytes()
        sent = 24
        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(lambda _: call(server.url + "/invocations", photo,
                                              {"Content-Type": "image/jpeg"})[0], range(sent))
            for _ in range(3):
                _scrape(server.url)  # answers 200 while the invocations are served
            assert list(answers) == [200] * sent
        sock = _half_sent_invocation(server.url, photo)
        try:
            deadline = time.monotonic() + 30
            while True:  # the worker counts it once it has read the headers
                text = _scrape(server.url)
                if samples(text, f"{PREFIX}requests_in_flight")[0].value == 1:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.1)
            sock.sendall(photo[len(photo) // 2:])
            answer = b""
            while chunk := sock.recv(65536):  # the server closes after it (Connection: close)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        finally:
            sock.close()
        sent += 1
        workers = server.worker_pids()
        totals = []
        for _ in range(6):
            text = _scrape(server.url)
            totals.append(_invocations_total(text))
            assert {int(s.labels["pid"]) for s in samples(text, f"{PREFIX}model_info")} == workers
        assert totals == [sent] * 6, totals
        assert samples(text, f"{PREFIX}invocation_seconds_count")[0].value == sent
        assert samples(text, f"{PREFIX}worker_restarts_total")[0].value == 0

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            text = _scrape(server.url)
            pids = {int(s.labels["pid"]) for s in samples(text, f"{PREFIX}model_info")}
            if samples(text, f"{PREFIX}worker_restarts_total")[0].value == 1 and len(pids) == 2:
                break
            assert time.monotonic() < deadline, (pids, server.log[-2000:])
            time.sleep(0.2)
        assert victim not in pids
        assert _invocations_total(text) == sent
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "metrics-scrape.txt").write_text(text)
    finally:
        server.stop()
