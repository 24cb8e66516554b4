#!/usr/bin/env python3
"""Serving latency and throughput against the real server on loopback, with the bare model as
the baseline, measured in the same run.

A ResNet50 artifact (random weights, 133 classes: the shape of the real model; latency does not
depend on the weights) is written with train.artifact, served by container/serve (1 worker),
and sent the sample dog photos as image/jpeg over keep-alive connections:
- p50/p99 latency (ms) and throughput (requests/s) at concurrency 1 and 8;
- the bare ``model(x)`` forward on the already-preprocessed tensor (same program, same threads),
  in rounds alternating with the concurrency-1 requests;
- the ratio server-p50 / forward-p50 (goal for resnet50 on CPU: <= 1.15);
- a 12-megapixel JPEG against a 0.3-megapixel one (p50 each, and their ratio).

    .venv/bin/python benchmarks/bench_serve.py [--requests 40]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import DOG_PHOTOS, start_server  # noqa: E402
from train import artifact, data, model  # noqa: E402


_local = threading.local()


def post(url: str, body: bytes) -> float:
    """One image/jpeg invocation on this thread's keep-alive connection (SageMaker's front end
    keeps its connections to the container open); returns the latency in ms."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        parts = urlsplit(url)
        conn = _local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    start = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
    return (time.perf_counter() - start) * 1000


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run_load(url: str, bodies: list[bytes], n: int, concurrency: int) -> tuple[list[float], float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda i: post(url, bodies[i % len(bodies)]), range(n)))
    return latencies, n / (time.perf_counter() - start)


def jpeg(size: tuple[int, int]) -> bytes:
    with Image.open(DOG_PHOTOS[1]) as img:
        buf = io.BytesIO()
        img.convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--arch", default="resnet50")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        net = model.build(args.arch, 133)
        pre = data.Preprocess.for_size(224)
        folders = [f"{i + 1:03d}.Breed_{i}" for i in range(133)]
        artifact.write(model_dir, net, args.arch, folders, pre, "bench", {}, {})
        server = start_server(model_dir, Path(tmp) / "serve.log")
        try:
            bodies = [p.read_bytes() for p in DOG_PHOTOS]
            for body in bodies:
                post(server.url, body)  # warm-up

            # Bare forward: the same program on the already-preprocessed tensor, as the server
            # runs it (channels_last weights and input, the server's thread count), in this
            # process while the server idles.
            from serve.decode import Preprocessor

            p = pre
            x = Preprocessor(p.resize, p.crop, p.mean, p.std, 50_000_000)(bodies[0])[None]
            program = torch.export.load(str(model_dir / "model.pt2")).module().to(
                memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
            torch.set_num_threads(len(os.sched_getaffinity(0)))

            def bare() -> float:
                start = time.perf_counter()
                program(x)
                return (time.perf_counter() - start) * 1000

            # Concurrency 1 and the bare forward in alternating rounds, so that a shared
            # machine's slow spells fall on both sides of the ratio.
            serial, forward = [], []
            rounds = 4
            with torch.inference_mode():
                bare()
                for _ in range(rounds):
                    serial += [post(server.url, bodies[i % len(bodies)])
                               for i in range(args.requests // rounds)]
                    forward += [bare() for _ in range(args.requests // rounds)]
            forward_p50 = statistics.median(forward)
            results = {1: (statistics.median(serial), percentile(serial, 99),
                           1000 / statistics.mean(serial))}
            latencies, rps = run_load(server.url, bodies, args.requests, 8)
            results[8] = (statistics.median(latencies), percentile(latencies, 99), rps)

            small, large = jpeg((640, 480)), jpeg((4000, 3000))
            small_ms = statistics.median(post(server.url, small) for _ in range(10))
            large_ms = statistics.median(post(server.url, large) for _ in range(10))
        finally:
            server.stop()

    print(f"{args.arch}, 133 classes, 1 worker, {torch.get_num_threads()} threads, "
          f"{args.requests} requests per row, sample dog photos (24-77 KB JPEG)")
    print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for concurrency, (p50, p99, rps) in results.items():
        print(f"{concurrency:>11} {p50:>8.1f} {p99:>8.1f} {rps:>7.2f}")
    print(f"bare forward p50: {forward_p50:.1f} ms")
    print(f"server p50 / forward p50 (concurrency 1): {results[1][0] / forward_p50:.3f} "
          f"(goal <= 1.15)")
    print(f"0.3 MP JPEG ({len(small) // 1024} KB) p50 {small_ms:.1f} ms; 12 MP JPEG "
          f"({len(large) // 1024} KB) p50 {large_ms:.1f} ms; ratio {large_ms / small_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
