#!/usr/bin/env python3
"""Serving latency and throughput against the real server on loopback, with the bare model as
the baseline, measured in the same run.

A ResNet50 artifact (random weights, 133 classes: the shape of the real model; latency does not
depend on the weights) is written with train.artifact and served by container/serve (1 worker,
the host's default batching unless SAGEMAKER_MODEL_SERVER_* variables say otherwise). The sample
dog photos are sent as image/jpeg over keep-alive connections. Printed:
- the bare forward (serve.model.Classifier.forward on decoded images, the server's thread
  count) at batch 1 and at the max batch size, ms per image;
- the server's p50/p99 latency (ms) and throughput (requests/s) at concurrency 1, 8 and 16;
- the ratios the serving goals are stated in: concurrency-1 p50 / bare batch-1 forward
  (<= 1.10), concurrency-8 throughput / concurrency-1 throughput (>= 1.3), concurrency-8
  throughput / bare max-batch images per second (>= 0.9).

    .venv/bin/python benchmarks/bench_serve.py [--requests 48] [--arch resnet50]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve.config import Settings  # noqa: E402
from serve.decode import decode  # noqa: E402
from serve.model import Classifier  # noqa: E402
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
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: post(url, bodies[i % len(bodies)]), range(concurrency)))  # connect
        start = time.perf_counter()
        latencies = list(pool.map(lambda i: post(url, bodies[i % len(bodies)]), range(n)))
    return latencies, n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per row")
    parser.add_argument("--arch", default="resnet50")
    args = parser.parse_args()
    settings = Settings.from_env()
    max_batch = settings.max_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        pre = data.Preprocess.for_size(224)
        folders = [f"{i + 1:03d}.Breed_{i}" for i in range(133)]
        artifact.write(model_dir, model.build(args.arch, 133), args.arch, folders, pre, "bench",
                       {}, {})
        server = start_server(model_dir, Path(tmp) / "serve.log",
                              env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
        try:
            bodies = [p.read_bytes() for p in DOG_PHOTOS]
            for body in bodies:
                post(server.url, body)  # warm-up

            # The bare forward in this process (the server idles meanwhile), with the server's
            # thread count, in rounds alternating with the concurrency-1 requests so that a
            # shared machine's slow spells fall on both sides of the ratio.
            torch.set_num_threads(settings.threads_per_worker)
            bare = Classifier(model_dir, torch.device("cpu"))
            one = decode(bodies[0], bare.geometry, 50_000_000, 2_000_000)[None].copy()
            full = np.repeat(one, max_batch, axis=0)
            bare.forward(full)

            def forward_ms(x: np.ndarray) -> float:
                start = time.perf_counter()
                bare.forward(x)
                return (time.perf_counter() - start) * 1000 / len(x)

            serial, b1, bmax = [], [], []
            rounds = 4
            for _ in range(rounds):
                serial += [post(server.url, bodies[i % len(bodies)])
                           for i in range(args.requests // rounds)]
                b1 += [forward_ms(one) for _ in range(args.requests // rounds)]
                bmax += [forward_ms(full) for _ in range(max(2, args.requests // rounds
                                                             // max_batch))]
            del bare
            results = {1: (statistics.median(serial), percentile(serial, 99),
                           1000 / statistics.mean(serial))}
            for concurrency in (8, 16):
                latencies, rps = run_load(server.url, bodies, args.requests, concurrency)
                results[concurrency] = (statistics.median(latencies),
                                        percentile(latencies, 99), rps)
        finally:
            server.stop()

    b1_ms, bmax_ms = statistics.median(b1), statistics.median(bmax)
    print(f"{args.arch}, 133 classes, 1 worker, {settings.threads_per_worker} threads, max batch "
          f"{max_batch}, max delay {settings.max_batch_delay_ms} ms, {args.requests} requests "
          f"per row, sample dog photos (24-77 KB JPEG)")
    print(f"bare forward: batch 1 {b1_ms:.1f} ms per image; batch {max_batch} {bmax_ms:.1f} ms "
          f"per image ({1000 / bmax_ms:.1f} images/s)")
    print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for concurrency, (p50, p99, rps) in results.items():
        print(f"{concurrency:>11} {p50:>8.1f} {p99:>8.1f} {rps:>7.2f}")
    c1, c8 = results[1], results[8]
    print(f"c1 p50 / bare batch-1 forward:        {c1[0] / b1_ms:.3f} (goal <= 1.10)")
    print(f"c8 throughput / c1 throughput:        {c8[2] / c1[2]:.3f} (goal >= 1.3)")
    print(f"c8 throughput / bare max-batch img/s: {c8[2] * bmax_ms / 1000:.3f} (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
