"""Helpers for tests that talk to a running server or read what it wrote: HTTP calls, load,
the access log, the EMF structure, chromium's console, and the numbers kept for a person to read
(out/test-artifacts/)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
from pathlib import Path

from PIL import Image

from tests.conftest import ARTIFACTS, DOG_PHOTOS


def call(url: str, body: bytes | None = None, headers: dict | None = None, method: str = "POST",
         timeout: float = 60) -> tuple[int, dict, float]:
    """One HTTP request; returns (status, JSON body, latency in ms). A server that answers
    before reading the whole body (413) may close the socket under the sender: the answer is
    still read."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""))
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders()
        try:
            if body:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        status, raw = response.status, response.read()
    finally:
        conn.close()
    return status, json.loads(raw), (time.perf_counter() - start) * 1000


def predict(server, path=DOG_PHOTOS[0], **headers):
    return call(server.url + "/invocations", path.read_bytes(),
                {"Content-Type": "image/jpeg", **headers})


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def access_lines(server) -> list[dict]:
    return [json.loads(line.split(" INFO ", 1)[1]) for line in server.log.splitlines()
            if "serve.access" in line]


def save_artifact(name: str, doc: dict) -> None:
    """Numbers a person reads after the run (out/test-artifacts/, kept with the test output)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_text(json.dumps(doc))


def load(url: str, seconds: float, concurrency: int, body: bytes = None,
         headers: dict | None = None) -> list:
    """``concurrency`` threads POSTing for ``seconds``, a new connection per request (a request
    that fails is one that was in flight). Returns each request's status, or the exception's
    name."""
    import threading

    body = body or DOG_PHOTOS[0].read_bytes()
    headers = headers or {"Content-Type": "image/jpeg"}
    results, stop_at = [], time.monotonic() + seconds

    def worker():
        while time.monotonic() < stop_at:
            try:
                results.append(call(url + "/invocations", body, headers, timeout=90)[0])
            except (OSError, ValueError) as exc:
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return results


def emf_ok(doc: dict) -> None:
    """The EMF specification's required structure (CloudWatch User Guide, "Embedded metric
    format specification"): a root ``_aws`` with a millisecond ``Timestamp`` and
    ``CloudWatchMetrics`` directives (Namespace, Dimensions: arrays of root keys, Metrics: names
    with root values)."""
    meta = doc["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1.7e12
    assert meta["CloudWatchMetrics"]
    for directive in meta["CloudWatchMetrics"]:
        assert isinstance(directive["Namespace"], str) and directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            assert all(isinstance(doc[key], str) for key in dimension_set)
        assert directive["Metrics"] and len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert isinstance(doc[metric["Name"]], (int, float, list))


def chromium(url: str, screenshot: Path, profile: Path) -> str:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=1",
           f"--screenshot={screenshot}", "--window-size=1200,2400", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stderr


def cells(out: str) -> dict[str, list[str]]:
    """The printed tables' rows by their first cell (columns are two spaces or more apart)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if len(row) > 1}
