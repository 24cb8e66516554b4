"""A real gunicorn process on loopback, serving the model the real `train` made, with the dog
photos as uploads. Every bad request is followed by a good one, with the workers unchanged."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import DOG_PHOTOS, start_server
from tests.helpers.serving import access_lines, call, jpeg_bytes, load, png_bytes, predict, save_artifact

pytestmark = pytest.mark.model


def test_ping_and_a_dog_photo(server, trained_model_dir):
    status, body, _ = call(server.url + "/ping", method="GET")
    manifest = json.loads((trained_model_dir / "manifest.json").read_text())
    assert status == 200 and body["model_version"] == manifest["model_version"]
    status, body, _ = predict(server)
    assert status == 200
    assert body["model_version"] == manifest["model_version"]
    top = body["predictions"][0]["top_k"]
    assert len(top) == 5
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    for t in top:
        assert manifest["classes"][t["index"]] == t["label"]


def test_every_sample_photo_in_one_json_request(server):
    instances = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in DOG_PHOTOS]
    status, body, _ = call(server.url + "/invocations",
                           json.dumps({"instances": instances, "k": 3}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200
    assert len(body["predictions"]) == len(DOG_PHOTOS)
    assert all(len(p["top_k"]) == 3 for p in body["predictions"])


def test_k_and_all_probabilities_through_custom_attributes(server):
    status, body, _ = predict(server, **{"X-Amzn-SageMaker-Custom-Attributes":
                                         "k=2;probabilities=true"})
    assert status == 200
    prediction = body["predictions"][0]
    assert len(prediction["top_k"]) == 2
    probabilities = prediction["probabilities"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3
    best = max(range(10), key=probabilities.__getitem__)
    assert prediction["top_k"][0]["index"] == best  # argmax clients get the same answer


@pytest.mark.parametrize("convert", ["L", "CMYK", "P", "RGBA", "12MP", "PNG"])
def test_odd_but_valid_photos_are_converted(server, convert):
    with Image.open(DOG_PHOTOS[1]) as img:
        img = img.convert("RGB")
    if convert == "12MP":
        body, ctype = jpeg_bytes(img.resize((4000, 3000)), quality=85), "image/jpeg"
    elif convert in ("P", "RGBA", "PNG"):
        mode = {"P": "P", "RGBA": "RGBA", "PNG": "RGB"}[convert]
        im = img.convert(mode)
        if mode == "RGBA":
            im.putalpha(100)
        body, ctype = png_bytes(im), "image/png"
    else:
        body, ctype = jpeg_bytes(img.convert(convert)), "application/x-image"
    status, out, _ = call(server.url + "/invocations", body, {"Content-Type": ctype})
    assert status == 200, out


def _bad_inputs():
    photo = DOG_PHOTOS[0].read_bytes()
    bomb = png_bytes(Image.new("L", (12000, 12000)))  # 144 MP of zeros: a tiny file
    jpeg = {"Content-Type": "image/jpeg"}
    as_json = {"Content-Type": "application/json"}
    b64 = base64.b64encode(photo).decode()
    tiny_png = base64.b64encode(png_bytes(Image.new("RGB", (8, 8)))).decode()
    return {
        "truncated jpeg": (photo[: len(photo) // 3], jpeg, 400),
        "random bytes": (bytes(range(256)) * 40, jpeg, 400),
        "empty body": (b"", jpeg, 400),
        "pdf as image": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", jpeg, 400),
        "decompression bomb": (bomb, {"Content-Type": "image/png"}, 400),
        "bad json": (b'{"instances": [', as_json, 400),
        "json without instances": (b'{"images": []}', as_json, 400),
        "json empty instances": (b'{"instances": []}', as_json, 400),
        "json instance without b64": (b'{"instances": [{"bytes": "x"}]}', as_json, 400),
        "bad base64": (b'{"instances": [{"b64": "not base64!!"}]}', as_json, 400),
        "base64 of garbage": (json.dumps({"instances": [{"b64": b64}, {"b64": "aGVsbG8="}]})
                              .encode(), as_json, 400),
        "k zero": (photo, {**jpeg, "X-Amzn-SageMaker-Custom-Attributes": "k=0"}, 400),
        "k not a number": (json.dumps({"instances": [{"b64": b64}], "k": "five"}).encode(),
                           as_json, 400),
        "k over classes": (photo, {**jpeg, "X-Amzn-SageMaker-Custom-Attributes": "k=500"}, 400),
        "text content type": (b"hello", {"Content-Type": "text/plain"}, 415),
        "no content type": (photo, {"Content-Type": ""}, 415),
        "csv accept": (photo, {**jpeg, "Accept": "text/csv"}, 406),
        "over the payload cap": (b"\xff\xd8" + b"\0" * (6 * 1024 * 1024 + 10), jpeg, 413),
        # Budgets, checked before any decoding:
        "1x50000 strip": (png_bytes(Image.new("L", (1, 50_000))), {"Content-Type": "image/png"},
                          400),
        "1024 images in one request": (json.dumps({"instances": [{"b64": tiny_png}] * 1024})
                                       .encode(), as_json, 400),
        "deeply nested json": (b"[" * 100_000 + b"]" * 100_000, as_json, 400),
    }


BAD = _bad_inputs()


def worker_rss(server) -> int:
    import psutil

    return sum(psutil.Process(pid).memory_info().rss for pid in server.worker_pids())


# What one request may add to a worker's memory (the decode budget is 512 MB, and a request's
# body is at most 6 MB): far below what the unbounded cases took (12.6 GB for the 1x50,000 PNG).
RSS_BOUND = 700 * 2**20


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, name):
    body, headers, expected = BAD[name]
    workers = server.worker_pids()
    predict(server)
    idle = worker_rss(server)
    status, out, _ = call(server.url + "/invocations", body, headers)
    assert status == expected, out
    assert out["status"] == expected and out["reason"], out
    status, out, _ = predict(server)
    assert status == 200, out
    assert server.worker_pids() == workers
    assert worker_rss(server) - idle < RSS_BOUND


def test_the_budgets_name_their_limits(server):
    strip, headers, _ = BAD["1x50000 strip"]
    _, out, _ = call(server.url + "/invocations", strip, headers)
    assert "resize to 37x1850000 for the model; the limit is 2,000,000 pixels" in out["reason"]
    many, headers, _ = BAD["1024 images in one request"]
    _, out, _ = call(server.url + "/invocations", many, headers)
    assert out["reason"] == ("1024 images in one request; the limit is 64 "
                             "(SERVE_MAX_IMAGES_PER_REQUEST)")
    _, out, _ = call(server.url + "/invocations", *BAD["deeply nested json"][:2])
    assert out["reason"] == "the JSON body is nested too deeply"


def test_a_large_legitimate_png_decodes_within_the_memory_bound(server):
    """24 MP of one colour: a small PNG body whose decode holds about 150 MB."""
    body = png_bytes(Image.new("RGB", (6000, 4000), (90, 120, 60)))
    assert len(body) < 6 * 2**20
    predict(server)
    idle = worker_rss(server)
    status, out, _ = call(server.url + "/invocations", body, {"Content-Type": "image/png"})
    assert status == 200, out
    assert worker_rss(server) - idle < RSS_BOUND


def test_exif_orientation_is_honoured(server):
    """A tall photo stored sideways with EXIF orientation 6 classifies like the upright one."""
    with Image.open(DOG_PHOTOS[2]) as img:
        upright = img.convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera stores
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    _, a, _ = call(server.url + "/invocations", jpeg_bytes(upright, quality=95),
                   {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes":
                    "probabilities=true"})
    _, b, _ = call(server.url + "/invocations", jpeg_bytes(sideways, quality=95, exif=exif),
                   {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes":
                    "probabilities=true"})
    pa, pb = a["predictions"][0]["probabilities"], b["predictions"][0]["probabilities"]
    assert max(abs(x - y) for x, y in zip(pa, pb)) < 0.05


def test_execution_parameters(server):
    """Two max batches (8 on CPU) per worker in flight, within 100 MB at the 6 MB payload."""
    status, body, _ = call(server.url + "/execution-parameters", method="GET")
    assert status == 200
    assert body == {"MaxConcurrentTransforms": 16, "BatchStrategy": "SINGLE_RECORD",
                    "MaxPayloadInMB": 6}


def test_access_log_is_structured_and_never_holds_the_image(server):
    """With the request thread's CPU time, and the worker's threads named by kind."""
    predict(server)
    lines = access_lines(server)
    ok = [e for e in lines if e["path"] == "/invocations" and e["status"] == 200
          and e["bytes"] == DOG_PHOTOS[0].stat().st_size]
    assert ok
    line = ok[-1]
    assert line["latency_ms"] > 0 and line["images"] == 1 and line["batch_size"] >= 1
    for part in ("decode_ms", "queue_ms", "compute_ms"):
        assert 0 <= line[part] <= line["latency_ms"], line
    # The request thread's CPU time: its decode's, within all of its work in the app.
    assert 0 < line["decode_cpu_ms"] <= line["cpu_ms"], line
    assert base64.b64encode(DOG_PHOTOS[0].read_bytes()[:30]).decode()[:20] not in server.log
    # The worker's threads carry their kind in the OS's names (serve/threads.py): what `top -H`
    # shows and bench_serve.py --stages reads.
    names = {(task / "comm").read_text().strip() for pid in server.worker_pids()
             for task in Path(f"/proc/{pid}/task").iterdir()}
    assert {"serve-request", "serve-model", "serve-load"} <= names, names


def test_ping_is_503_until_the_model_is_there(tmp_path, trained_model_dir):
    """Started on an empty model dir, /ping says 503 with the reason; once the artifact lands
    (program first, manifest last, as train writes it) the worker loads it and says 200."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    server = start_server(model_dir, tmp_path / "serve.log", wait_ready=0)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status, body, ms = call(server.url + "/ping", method="GET", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        assert status == 503 and "manifest.json" in body["reason"]
        assert ms < 2000
        status, body, _ = predict(server)
        assert status == 503
        shutil.copy(trained_model_dir / "model.pt2", model_dir / "model.pt2")
        shutil.copy(trained_model_dir / "manifest.json", model_dir / "manifest.json")
        while time.monotonic() < deadline:
            status, body, _ = call(server.url + "/ping", method="GET", timeout=2)
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        assert predict(server)[0] == 200
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_the_request_in_flight(tmp_path, trained_model_dir):
    """SIGTERM arrives while a request's body is still being sent: that request is answered,
    and the server exits within SageMaker's 30 s."""
    server = start_server(trained_model_dir, tmp_path / "serve.log")
    photo = DOG_PHOTOS[0].read_bytes()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + photo[:1000])
    time.sleep(0.5)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    sock.sendall(photo[1000:])
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b'"top_k"' in response
    code = server.proc.wait(timeout=30)
    assert time.monotonic() - start < 30
    assert code == 0


# ------------------------------------------------------------------ batching, load, faults
def test_concurrent_requests_share_batches(server):
    before = len(access_lines(server))
    results = load(server.url, 6, 8)
    assert results and set(results) == {200}, results
    sizes = [e["batch_size"] for e in access_lines(server)[before:]
             if e["path"] == "/invocations"]
    assert max(sizes) >= 2, sizes  # 8 at once on 2 cores: requests queue behind a batch


def test_ping_answers_within_2_s_under_a_full_queue(tmp_path, trained_model_dir):
    import threading

    s = start_server(trained_model_dir, tmp_path / "serve.log",
                     env={"SAGEMAKER_MODEL_SERVER_MAX_QUEUE": "4"})
    try:
        many = json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}
                                         for p in DOG_PHOTOS * 9]}).encode()  # 63 images
        outcome = {}
        loader = threading.Thread(target=lambda: outcome.update(statuses=load(
            s.url, 8, 24, many, {"Content-Type": "application/json"})))
        loader.start()
        time.sleep(1.0)
        pings = []
        while loader.is_alive():
            status, _, ms = call(s.url + "/ping", method="GET", timeout=10)
            pings.append((status, ms))
            time.sleep(0.2)
        loader.join()
        statuses = outcome["statuses"]
        assert 503 in statuses and 200 in statuses, statuses  # the queue was full
        save_artifact("ping-under-full-queue.json", {
            "requests": len(statuses), "ok": statuses.count(200), "503": statuses.count(503),
            "pings": len(pings), "ping_ms_max": round(max(ms for _, ms in pings), 1)})
        assert len(pings) >= 5 and all(st == 200 and ms < 2000 for st, ms in pings), pings
        overloaded = [e for e in access_lines(s) if e["status"] == 503]
        assert overloaded
        status, out, _ = call(s.url + "/invocations", many, {"Content-Type": "application/json"})
        assert status == 200
    finally:
        s.stop()


def test_sigkill_of_one_of_two_workers_loses_only_its_requests_in_flight(tmp_path,
                                                                        trained_model_dir):
    """A worker killed under load: the requests it held fail (their connections close), none
    is answered 503, and its replacement's requests wait for its model instead of failing.
    On a fresh compile store the workers serve while helpers compile each batch size once,
    and the replacement adopts those programs instead of compiling again."""
    import os
    import re
    import signal as sig
    import threading

    from serve.buckets import sizes_to_compile

    s = start_server(trained_model_dir, tmp_path / "serve.log",
                     env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SERVE_COMPILE": "on",
                          "SERVE_COMPILE_PROCESSES": "2",  # one per core: the test waits for them
                          "SERVE_COMPILE_CACHE_DIR": str(tmp_path / "compiled")})
    try:
        outcome = {}
        loader = threading.Thread(target=lambda: outcome.update(statuses=load(s.url, 20, 16)))
        loader.start()
        time.sleep(4.0)
        victim = min(s.worker_pids())
        os.kill(victim, sig.SIGKILL)
        loader.join()
        statuses = outcome["statuses"]
        failed = [r for r in statuses if r != 200]
        save_artifact("worker-kill.json", {"requests": len(statuses),
                                           "ok": statuses.count(200), "failed": failed})
        assert 503 not in statuses
        assert len(failed) <= 16, failed  # at most one request per load thread was in flight
        assert statuses.count(200) > 10 * len(failed), (len(statuses), failed)
        assert len(s.worker_pids()) == 2 and victim not in s.worker_pids()
        assert predict(s)[0] == 200
        s.wait_compiled(2)  # both live workers, the replacement included
        compiled = [int(n) for n in re.findall(r"compiled batch size (\d+) in", s.log)]
        assert sorted(compiled) == sizes_to_compile(8), s.log[-3000:]
    finally:
        s.stop()
