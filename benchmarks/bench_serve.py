#!/usr/bin/env python3
"""Serving latency and throughput against the real server on loopback, with the bare model as
the baseline, measured in the same run.

A ResNet50 artifact (random weights, 133 classes: the shape of the real model; latency does not
depend on the weights) is written with train.export.artifact and served by container/serve
(1 worker, the host's default batching unless SAGEMAKER_MODEL_SERVER_* variables say otherwise).
The sample dog photos are sent as image/jpeg over keep-alive connections. Printed:
- the bare forward (serve.model.Classifier.forward on decoded images, the server's thread
  count) at batch 1 and at the max batch size, ms per image;
- the server's p50/p99 latency (ms) and throughput (requests/s) at concurrency 1, 8 and 16;
- the ratios the serving goals are stated in: concurrency-1 p50 / bare batch-1 forward
  (<= 1.10), concurrency-8 throughput / concurrency-1 throughput (>= 1.3), concurrency-8
  throughput / bare max-batch images per second (>= 0.9).

With ``--compare``, the same run serves the artifact three times: as before the faster forward
(SERVE_PRECISION=fp32, SERVE_COMPILE=off), in bf16 compiled, and as this host's default (the
precision and mode serve chooses), and prints each and the ratios of the faster-forward goals: the chosen path's
concurrency-1 p50 / fp32-eager's (<= 0.65) and its concurrency-8 throughput / fp32-eager's
concurrency-1 throughput (>= 2.5), with the top-1 agreement of the two on the sample photos and
on flipped and cropped copies of them (a random-weights model: its top-1 margins are thin, so
this is a harsh check).

With ``--stages``, each server is also driven at concurrency 1, 8, 16 and 32 and every
core-millisecond of the worker is accounted for, per request: the request threads' decode and
the rest of their work in the app (the server's own ``decode_cpu_ms`` and ``cpu_ms``), their work
outside it (gunicorn's HTTP parsing and writing, the access log), the model thread with torch's
intra-op threads (batching and the forward), the worker's main thread and its other threads,
the gunicorn master and this load client, read from /proc's per-thread schedstat by the OS
thread names serve/threads.py gives. It sets their sum against the wall time of the two cores
and the throughput against the decode + forward limit measured in the same run:
1000 / (bare max-batch forward ms per image + concurrency-1 decode CPU ms per image / cores).

With ``--ab NAME=VALUE``, two servers run at once, the second with that variable set, and
their accounted rows alternate round by round with the bare forward, then B / A is printed: a
shared machine drifts too much between runs minutes apart for separate runs to compare.

    .venv/bin/python benchmarks/bench_serve.py [--requests 48] [--arch resnet50] [--compare]
                                               [--stages] [--only NAME] [--ab NAME=VALUE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve.config import Settings  # noqa: E402
from serve.decode import decode  # noqa: E402
from serve.lifecycle import choose_precision  # noqa: E402
from serve.model import Classifier  # noqa: E402
from tests.conftest import DOG_PHOTOS, start_server  # noqa: E402
from train import data, model  # noqa: E402
from train.export import artifact, quantize  # noqa: E402

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


STAGE_CONCURRENCY = (1, 8, 16, 32)
# The accounting's rows: (name, what it holds), in ms of CPU per request.
STAGES = (("decode", "request threads: decode and resize"),
          ("app", "request threads: body, parse, answer (app)"),
          ("http", "request threads: gunicorn HTTP, access log"),
          ("model", "model + intra-op threads: batch, forward"),
          ("main", "worker main thread: accept, keep-alive"),
          ("other", "worker's other threads (metrics, load)"),
          ("master", "gunicorn master"),
          ("client", "this load client (not on an endpoint)"))


def thread_cpu_ms(pids: set[int]) -> dict[str, float]:
    """CPU time in ms of each kind of thread of the processes ``pids``: the first field of
    /proc/PID/task/TID/schedstat (ns on a CPU), by the thread's OS name (serve/threads.py);
    a process's first thread is ``main``, an unnamed one ``other``."""
    out: dict[str, float] = defaultdict(float)
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                comm = (task / "comm").read_text().strip()
                ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            kind = comm if comm.startswith("serve-") else (
                "main" if int(task.name) == pid else "other")
            out[kind] += ns / 1e6
    return out


def access_lines(log: Path, offset: int) -> tuple[list[dict], int]:
    """The invocations' access-log records the server wrote to ``log`` after byte ``offset``,
    and the new offset. Lines that are no record (a logged exception) are skipped, where the
    tests' reader (tests/helpers/serving.py) fails on them."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read()
    records = []
    for line in text.decode(errors="replace").splitlines():
        start = line.find('{"method"')
        if start >= 0 and '"/invocations"' in line:
            records.append(json.loads(line[start:]))
    return records, offset + len(text)


def stage_row(server, log: Path, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    """One load row with its CPU accounting: ms of CPU per request by stage (``STAGES``), the
    throughput, the wall ms per request and the mean batch size."""
    workers = server.worker_pids()
    offset = log.stat().st_size
    before = thread_cpu_ms(workers), thread_cpu_ms({server.proc.pid}), time.process_time()
    latencies, rps = run_load(server.url, bodies, requests, concurrency)
    after = thread_cpu_ms(workers), thread_cpu_ms({server.proc.pid}), time.process_time()
    time.sleep(0.2)  # the last access-log lines
    records, _ = access_lines(log, offset)
    records = records[-requests:]  # the connecting requests came first
    n = len(records)
    worker = {k: after[0][k] - before[0].get(k, 0.0) for k in after[0]}
    total = sum(worker.values())
    # run_load's connecting requests are in the CPU snapshots too: scale them out.
    share = requests / (requests + concurrency)
    decode = sum(r.get("decode_cpu_ms", 0.0) for r in records) / n
    app = sum(r.get("cpu_ms", 0.0) for r in records) / n - decode
    request_threads = worker.get("serve-request", 0.0) * share / requests
    row = {"decode": decode, "app": app, "http": request_threads - decode - app,
           "model": worker.get("serve-model", 0.0) * share / requests,
           "main": worker.get("main", 0.0) * share / requests,
           "other": (total - sum(worker.get(k, 0.0) for k in ("serve-request", "serve-model",
                                                               "main"))) * share / requests,
           "master": (sum(after[1].values()) - sum(before[1].values())) * share / requests,
           "client": (after[2] - before[2]) * 1000 * share / requests}
    return {"stages": row, "rps": rps, "wall_ms": 1000 / rps, "latencies": latencies,
            "batch": sum(r.get("batch_size", 1) for r in records) / n,
            "decode_wall": sum(r.get("decode_ms", 0.0) for r in records) / n,
            "queue": sum(r.get("queue_ms", 0.0) for r in records) / n,
            "compute": sum(r.get("compute_ms", 0.0) for r in records) / n}


def report_stages(m: dict, cores: int, limit: float | None = None) -> None:
    """The accounting table of one server, and its throughput against the limit (measured
    from its own rows unless given)."""
    rows = m["stages"]
    decode_c1 = rows[1]["stages"]["decode"]
    limit = limit or 1000 / (m["bmax"] + decode_c1 / cores)
    print(f"decode + forward limit: 1000 / ({m['bmax']:.1f} + {decode_c1:.1f} / {cores}) = "
          f"{limit:.1f} images/s")
    print(f"{'ms of CPU per request, by stage':<54}" + "".join(f"{'c' + str(c):>9}" for c in rows))
    for name, what in STAGES:
        print(f"  {name:<7} {what:<44}" + "".join(
            f"{r['stages'][name]:>9.2f}" for r in rows.values()))
    lines = (("sum", lambda r: sum(r["stages"].values())),
             (f"{cores} cores x wall ms per request", lambda r: cores * r["wall_ms"]),
             ("idle", lambda r: cores * r["wall_ms"] - sum(r["stages"].values())),
             ("wall: decode (mean)", lambda r: r["decode_wall"]),
             ("wall: queue (mean)", lambda r: r["queue"]),
             ("wall: forward of its batch (mean)", lambda r: r["compute"]),
             ("batch size (mean)", lambda r: r["batch"]),
             ("requests/s", lambda r: r["rps"]),
             ("p50 latency ms", lambda r: percentile(r["latencies"], 50)),
             ("p99 latency ms", lambda r: percentile(r["latencies"], 99)),
             ("requests/s / limit", lambda r: r["rps"] / limit))
    for name, value in lines:
        print(f"  {name:<52}" + "".join(f"{value(r):>9.2f}" for r in rows.values()))


def server_env(model_dir: Path, env: dict) -> dict:
    """``env`` for a benchmark server: one worker on ``model_dir`` unless ``env`` says else."""
    return {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SM_MODEL_DIR": str(model_dir), **env}


def serving(model_dir: Path, log: Path, env: dict):
    """A started server (``server_env``'s ``env``) whose workers run compiled programs only,
    unless compiling is off."""
    server = start_server(model_dir, log, env=env, wait_ready=600)
    if env.get("SERVE_COMPILE") != "off":
        server.wait_compiled(int(env["SAGEMAKER_MODEL_SERVER_WORKERS"]))
    return server


def bare_model(model_dir: Path, settings: Settings, body: bytes
               ) -> tuple[Classifier, np.ndarray, np.ndarray]:
    """The model in this process with the server's thread count, precision and mode, and
    ``body`` decoded as the server does, uint8 [1, crop, crop, 3] and [max batch, ...]."""
    torch.set_num_threads(settings.threads_per_worker)
    cpu = torch.device("cpu")
    bare = Classifier(model_dir, cpu, choose_precision(settings, cpu))
    bare.warm_up(settings.max_batch_size, compile_here=True)
    one = decode(body, bare.geometry, 50_000_000, 2_000_000)[None].copy()
    return bare, one, np.repeat(one, settings.max_batch_size, axis=0)


def forward_ms(bare: Classifier, x: np.ndarray) -> float:
    """One bare forward of ``x``, ms per image."""
    t = time.perf_counter()
    bare.forward(x)
    return (time.perf_counter() - t) * 1000 / len(x)


def measure_ab(model_dir: Path, tmp: Path, requests: int, env_a: dict, env_b: dict,
               rounds: int) -> None:
    """Servers A (``env_a``) and B (``env_b``) at once; in each round the bare forward at the
    max batch, then each server's rows (``STAGE_CONCURRENCY``, ``requests`` each), the order of
    A and B alternating by round. Prints each server's accounting summed over the rounds, its
    latencies, and B / A."""
    env_a, env_b = server_env(model_dir, env_a), server_env(model_dir, env_b)
    settings = Settings.from_env({**os.environ, **env_a})
    cores = settings.threads_per_worker * settings.workers
    bodies = [p.read_bytes() for p in DOG_PHOTOS]
    servers, logs = {}, {"A": tmp / "serve-a.log", "B": tmp / "serve-b.log"}
    try:
        for label, env in (("A", env_a), ("B", env_b)):
            servers[label] = serving(model_dir, logs[label], env)
        for label, server in servers.items():
            _local.__dict__.pop("conn", None)
            for body in bodies:
                post(server.url, body)  # warm-up
            chosen = [line for line in logs[label].read_text().splitlines()
                      if "precision " in line or "batches of up to" in line]
            print(f"{label}: " + " | ".join(line.split("INFO", 1)[-1].strip()
                                            for line in chosen[:2]))
        bare, _, full = bare_model(model_dir, settings, bodies[0])
        bmax, rows = [], {"A": defaultdict(list), "B": defaultdict(list)}
        for r in range(rounds):
            bmax += [forward_ms(bare, full) for _ in range(4)]
            for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                _local.__dict__.pop("conn", None)
                for c in STAGE_CONCURRENCY:
                    rows[label][c].append(stage_row(servers[label], logs[label], bodies,
                                                    requests, c))
    finally:
        for server in servers.values():
            server.stop()
    b = statistics.median(bmax)
    merged = {label: {c: merge_rows(rs) for c, rs in by_c.items()} for label, by_c in
              rows.items()}
    decode_c1 = statistics.mean(merged[label][1]["stages"]["decode"] for label in merged)
    limit = 1000 / (b + decode_c1 / cores)
    print(f"bare forward at batch {settings.max_batch_size}: {b:.2f} ms per image (median of "
          f"{len(bmax)}); {rounds} rounds of {requests} requests per row and server")
    for label in ("A", "B"):
        print(f"== {label}")
        report_stages({"stages": merged[label], "bmax": b}, cores, limit)
    print(f"{'== B / A':<54}" + "".join(f"{'c' + str(c):>9}" for c in STAGE_CONCURRENCY))
    for name, value in (("requests/s", lambda m: m["rps"]),
                        ("model + intra-op CPU ms per request",
                         lambda m: m["stages"]["model"]),
                        ("CPU ms per request, all stages", lambda m: sum(m["stages"].values())),
                        ("p50 latency", lambda m: percentile(m["latencies"], 50)),
                        ("p99 latency", lambda m: percentile(m["latencies"], 99))):
        print(f"  {name:<52}" + "".join(
            f"{value(merged['B'][c]) / value(merged['A'][c]):>9.3f}" for c in STAGE_CONCURRENCY))


def merge_rows(rows: list[dict]) -> dict:
    """Rounds of one row (``stage_row``'s) as one: CPU and wall means weighted by time,
    throughput over the summed time, latencies pooled."""
    seconds = [len(r["latencies"]) / r["rps"] for r in rows]
    total = sum(seconds)
    out = {"stages": {name: statistics.mean(r["stages"][name] for r in rows)
                      for name, _ in STAGES},
           "rps": sum(len(r["latencies"]) for r in rows) / total,
           "latencies": [x for r in rows for x in r["latencies"]]}
    out["wall_ms"] = 1000 / out["rps"]
    for key in ("batch", "decode_wall", "queue", "compute"):
        out[key] = statistics.mean(r[key] for r in rows)
    return out


def variants(bodies: list[bytes]) -> list[bytes]:
    """The photos, mirrored and cropped too: more inputs for the agreement check."""
    import io

    from PIL import Image, ImageOps

    out = list(bodies)
    for body in bodies:
        with Image.open(io.BytesIO(body)) as img:
            img = img.convert("RGB")
            w, h = img.size
            for copy in (ImageOps.mirror(img), img.crop((0, 0, w * 3 // 4, h * 3 // 4)),
                         img.crop((w // 4, h // 4, w, h))):
                buf = io.BytesIO()
                copy.save(buf, "JPEG", quality=90)
                out.append(buf.getvalue())
    return out


def top1(url: str, bodies: list[bytes]) -> list[int]:
    """Each body's top-1 class index from the server at ``url``."""
    answers = []
    for body in bodies:
        conn = http.client.HTTPConnection(*urlsplit(url).netloc.split(":"), timeout=60)
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        answers.append(json.loads(conn.getresponse().read())["predictions"][0]["top_k"][0]
                       ["index"])
        conn.close()
    return answers


def measure(model_dir: Path, log: Path, requests: int, env: dict, stages: bool = False) -> dict:
    """One server with ``env``: its bare forward (the same precision and mode), concurrency
    1/8/16, start-up seconds and top-1 answers."""
    # The server's own settings, so that the bare forward runs as its one worker does.
    env = server_env(model_dir, env)
    settings = Settings.from_env({**os.environ, **env})
    max_batch = settings.max_batch_size
    _local.__dict__.pop("conn", None)  # this thread's connection to an earlier server
    start = time.monotonic()
    server = serving(model_dir, log, env)
    startup_s = time.monotonic() - start
    try:
        bodies = [p.read_bytes() for p in DOG_PHOTOS]
        for body in bodies:
            post(server.url, body)  # warm-up
        answers = top1(server.url, variants(bodies))
        chosen = [line for line in log.read_text().splitlines() if "precision " in line]

        # The bare forward in this process (the server idles meanwhile), with the server's
        # thread count, precision and mode, in rounds alternating with the concurrency-1
        # requests so that a shared machine's slow spells fall on both sides of the ratio.
        bare, one, full = bare_model(model_dir, settings, bodies[0])
        serial, b1, bmax = [], [], []
        rounds = 4
        for _ in range(rounds):
            serial += [post(server.url, bodies[i % len(bodies)])
                       for i in range(requests // rounds)]
            b1 += [forward_ms(bare, one) for _ in range(requests // rounds)]
            bmax += [forward_ms(bare, full)
                     for _ in range(max(2, requests // rounds // max_batch))]
        rows = {1: (statistics.median(serial), percentile(serial, 99),
                    1000 / statistics.mean(serial))}
        for concurrency in (8, 16):
            latencies, rps = run_load(server.url, bodies, requests, concurrency)
            rows[concurrency] = (statistics.median(latencies), percentile(latencies, 99), rps)
        accounting = {c: stage_row(server, log, bodies, requests * 2, c)
                      for c in STAGE_CONCURRENCY} if stages else None
    finally:
        server.stop()
    return {"settings": settings, "rows": rows, "b1": statistics.median(b1),
            "bmax": statistics.median(bmax), "startup_s": startup_s, "answers": answers,
            "stages": accounting,
            "chosen": chosen[0].split("precision ", 1)[1] if chosen else "?"}


def report(name: str, m: dict, requests: int) -> None:
    s, rows = m["settings"], m["rows"]
    print(f"== {name}: {m['chosen']}")
    print(f"1 worker, {s.threads_per_worker} threads, max batch {s.max_batch_size}, max delay "
          f"{s.max_batch_delay_ms} ms, {requests} requests per row, sample dog photos; "
          f"start-up to /ping 200: {m['startup_s']:.1f} s")
    print(f"bare forward: batch 1 {m['b1']:.1f} ms per image; batch {s.max_batch_size} "
          f"{m['bmax']:.1f} ms per image ({1000 / m['bmax']:.1f} images/s)")
    print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for concurrency, (p50, p99, rps) in rows.items():
        print(f"{concurrency:>11} {p50:>8.1f} {p99:>8.1f} {rps:>7.2f}")
    c1, c8 = rows[1], rows[8]
    print(f"c1 p50 / bare batch-1 forward:        {c1[0] / m['b1']:.3f} (goal <= 1.10)")
    print(f"c8 throughput / c1 throughput:        {c8[2] / c1[2]:.3f} (goal >= 1.3)")
    print(f"c8 throughput / bare max-batch img/s: {c8[2] * m['bmax'] / 1000:.3f} (goal >= 0.9)")
    if m["stages"]:
        report_stages(m, s.threads_per_worker * s.workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per row")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--compare", action="store_true",
                        help="fp32 eager and this host's chosen path, in one run")
    parser.add_argument("--stages", action="store_true",
                        help="also account for the worker's CPU by stage at concurrency "
                             f"{', '.join(map(str, STAGE_CONCURRENCY))}")
    parser.add_argument("--ab", metavar="NAME=VALUE[,NAME=VALUE]",
                        help="serve each run twice at once, the second server (B) with this "
                             "variable set, and alternate their rows (concurrency 1, 8, 16, "
                             "32 with the CPU accounting) with the bare forward for --rounds "
                             "rounds, so that a shared machine's drift falls on both")
    parser.add_argument("--rounds", type=int, default=3, help="with --ab (default 3)")
    parser.add_argument("--only", metavar="NAME",
                        help="with --compare, serve only this run (fp32 eager, bf16 compiled "
                             "or chosen); its ratios to fp32 eager are then not printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        pre = data.Preprocess.for_size(224)
        folders = [f"{i + 1:03d}.Breed_{i}" for i in range(133)]
        net = model.build(args.arch, 133)

        def record(program: Path) -> dict:
            """The record a training job writes (train/export/precision.py), here unmeasured:
            every precision equal to fp32, so that the choice follows the host alone; with
            --compare, an int8 program calibrated on the sample photos."""
            unmeasured = {"evaluated_on": "none (benchmark)", "fp32": {"top1": 1.0},
                          "bf16": {"top1": 1.0}, "fp16": {"top1": 1.0}}
            if not args.compare:  # only fp32 eager is served
                return unmeasured
            calibration = [torch.stack([pre.eval_transform()(data.load_rgb(str(p), pre.resize))
                                        for p in DOG_PHOTOS])]
            int8 = quantize.write(program.parent, quantize.quantize(
                net, calibration, pre.crop, artifact.MAX_BATCH))
            return dict(unmeasured, int8={"top1": 1.0, "program": int8.name})

        artifact.write(model_dir, net, args.arch, folders, pre, "bench", {}, {})
        artifact.update(model_dir, {"precisions": record(model_dir / artifact.PROGRAM)})
        runs = {"fp32 eager": {"SERVE_PRECISION": "fp32", "SERVE_COMPILE": "off"}}
        if args.compare:
            runs["bf16 compiled"] = {"SERVE_PRECISION": "bf16", "SERVE_COMPILE": "on"}
            runs["chosen"] = {}
        if args.only:
            runs = {args.only: runs[args.only]}
        if args.ab:
            changed = dict(pair.split("=", 1) for pair in args.ab.split(","))
            for run, env in runs.items():
                print(f"{args.arch}, 133 classes, random weights; {run}: A, and with {args.ab} "
                      "(B)")
                measure_ab(model_dir, Path(tmp), args.requests, env, {**env, **changed},
                           args.rounds)
            return 0
        results = {name: measure(model_dir, Path(tmp) / f"serve-{i}.log", args.requests, env,
                                 args.stages) for i, (name, env) in enumerate(runs.items())}
    print(f"{args.arch}, 133 classes, random weights")
    for name, m in results.items():
        report(name, m, args.requests)
    base = results.get("fp32 eager")
    if base is None:
        return 0
    for name, run in results.items():
        if name == "fp32 eager":
            continue
        same = sum(a == b for a, b in zip(base["answers"], run["answers"]))
        print(f"== {name} against fp32 eager")
        print(f"c1 p50 {name} / fp32-eager c1 p50:        "
              f"{run['rows'][1][0] / base['rows'][1][0]:.3f} (goal <= 0.65)")
        print(f"c8 req/s {name} / fp32-eager c1 req/s:    "
              f"{run['rows'][8][2] / base['rows'][1][2]:.3f} (goal >= 2.5)")
        print(f"top-1 agreement on {len(base['answers'])} photos and copies: "
              f"{same}/{len(base['answers'])} (goal >= 99.5 %)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
