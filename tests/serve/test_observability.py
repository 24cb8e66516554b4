"""The endpoint's own metrics and drift scores from a real server, and the local page of them."""

from __future__ import annotations

import base64
import io
import json
import random
import re
import time

import pytest
from PIL import Image, ImageEnhance

from tests.conftest import ARTIFACTS, ROOT, start_server
from tests.helpers.serving import call, emf_ok

pytestmark = pytest.mark.model



def emf_docs(log: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in log.splitlines()
            if '"_aws"' in line and line.lstrip().startswith("{")]


def send(server, photos: list[bytes], per_request: int = 10) -> list[int]:
    statuses = []
    for i in range(0, len(photos), per_request):
        body = json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}
                                         for p in photos[i:i + per_request]]}).encode()
        statuses.append(call(server.url + "/invocations", body,
                             {"Content-Type": "application/json"})[0])
    return statuses


def darkened(path) -> bytes:
    with Image.open(path) as img:
        dark = ImageEnhance.Brightness(img.convert("RGB")).enhance(0.25)
    buf = io.BytesIO()
    dark.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def drift_after(server, timeout: float = 30) -> dict:
    """The drift scores of an interval that began after the requests sent so far ended: the
    second drift document from now."""
    def drift_docs():
        return [d for d in emf_docs(server.log) if "DriftPSIBrightness" in d]

    count = len(drift_docs()) + 2
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = drift_docs()
        if len(docs) >= count:
            return docs[-1]
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} drift documents:\n{server.log[-3000:]}")


def test_metrics_and_drift_from_a_real_server(trained_model_dir, digits_dir, tmp_path):
    server = start_server(trained_model_dir, tmp_path / "serve.log", env={
        "SERVE_METRICS_INTERVAL_S": "1", "SERVE_DRIFT_WINDOW": "200", "SERVE_COMPILE": "off",
        "SERVE_ENDPOINT_NAME": "dogs-test", "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "8"})
    try:
        # In distribution: the test channel's photos in a random order, as an endpoint's
        # traffic mixes its classes (sorted by class, the last 200 would hold no 0s or 1s).
        photos = [p.read_bytes() for p in sorted((digits_dir / "test").rglob("*.jpg"))]
        random.Random(0).shuffle(photos)
        statuses = send(server, photos)
        photo = photos[0]
        statuses += [call(server.url + "/invocations", photo[:len(photo) // 3],
                          {"Content-Type": "image/jpeg"})[0] for _ in range(3)]
        statuses += [call(server.url + "/invocations", b"hi", {"Content-Type": "text/plain"})[0]
                     for _ in range(2)]
        calm = drift_after(server)
        # Shifted: one class, darkened to a quarter of its brightness.
        ones = sorted((digits_dir / "test" / "002.digit_1").glob("*.jpg"))
        shifted_photos = [darkened(p) for p in ones] * (250 // len(ones) + 1)
        send(server, shifted_photos[:250])
        shifted = drift_after(server)
    finally:
        server.stop()
    log = server.log
    docs = emf_docs(log)
    assert docs
    for doc in docs:
        emf_ok(doc)
        assert doc["EndpointName"] == "dogs-test" and doc["VariantName"] == "AllTraffic"
    main = [d for d in docs if "Invocations" in d]
    n_requests = len(statuses) + 25  # and the shifted run's 25
    assert sum(d["Invocations"] for d in main) == n_requests
    by_status: dict[str, int] = {}
    for d in docs:
        if "Status" in d:
            by_status[d["Status"]] = by_status.get(d["Status"], 0) + d["Requests"]
    assert by_status == {"200": n_requests - 5, "400": 3, "415": 2}
    assert sum(d.get("DecodeFailures_corrupt", 0) for d in main) == 3
    assert sum(d.get("Images", 0) for d in main) == len(photos) + 250 + 3  # failed ones too
    assert max(d.get("BatchSizeMax", 0) for d in main) == 8  # 10-image requests, in batches of 8
    assert all(d["LatencyP50"] <= d["LatencyP99"] for d in main if "LatencyP50" in d)

    psi = {k: v for k, v in calm.items() if k.startswith("DriftPSI")}
    assert max(psi.values()) < 0.25, psi
    assert shifted["DriftPSIBrightness"] > 0.25 and shifted["DriftPSIPredictedClass"] > 0.25, \
        shifted
    assert re.search(r"serve WARNING drift: DriftPSIBrightness = \d+\.\d+ over 0\.25", log)
    assert "leaked" not in log  # frozen objects unfrozen at exit (nanobind reports them)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "drift-scores.json").write_text(json.dumps(
        {"in_distribution": psi, "shifted": {k: v for k, v in shifted.items()
                                             if k.startswith("DriftPSI")}}))
    (ARTIFACTS / "serve-with-metrics.log").write_text(log)

    # The local page of the same metrics, as a person opens it.
    from tests.helpers.serving import chromium

    page = tmp_path / "metrics.html"
    run = __import__("subprocess").run(
        [__import__("sys").executable, str(ROOT / "tools" / "metrics_page.py"),
         str(tmp_path / "serve.log"), str(page)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = page.read_text()
    assert "drift-brightness" in text and "would fire" in text
    shot = ARTIFACTS / "metrics-page.png"
    console = chromium(page.as_uri(), shot, tmp_path / "profile")
    assert not re.findall(r"INFO:CONSOLE.*", console), console
    assert shot.stat().st_size > 20_000
