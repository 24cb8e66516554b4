#!/usr/bin/env python3
"""Start-up of the real server on a fresh host, respawn, and whether batching across requests
pays, per precision.

A ResNet50 artifact is made by a short run of the real training entry (``container/train``:
133 breed folders of small photos cut from the sample dog photos, random init, one epoch at 224
px, so the manifest, the precision record and the int8 program are the job's own), and a copy
of it that carries this host's compiled programs (``container/compile``, as ``deploy.py
compile`` makes one). Then, each time on a fresh compile store and inductor cache (a fresh
host), with 1 and with 2 workers, for the model alone (empty store) and the model with its
packages (shipped):
- start to the first 200 on /invocations (a client retrying one request at a time);
- start to full speed: the end of the first burst of 24 requests at concurrency 8 (one at the
  first 200, then one every 3 s, the server idle between them) within 0.9 of the warm rate,
  measured first on a warm server of the same worker count;
- with ``--fail-once``, a start whose first compile fails (a C++ compiler that fails once): when
  the failure is said, when the retry starts and when the compiled programs take over;
- a respawn under load: 16 clients, SIGKILL of the worker (1 worker) 3 s in, seconds from the
  kill to the next 200;
- per precision (fp32, bf16, int8 compiled; fp32 eager), requests/s at concurrency 1 and 8, in
  alternating rounds, and their ratio (the goal: never below 1); with ``--baseline``, the two
  trees' servers one after the other for each precision.

``--baseline DIR`` runs the same measurements against another checkout's ``container/serve``
in the same run (e.g. ``git worktree add /tmp/main main``), for before/after ratios on a shared
machine; a baseline without ``container/compile`` has no shipped case.

    .venv/bin/python benchmarks/bench_startup.py [--baseline DIR] [--model-dir DIR]
        [--requests 48] [--skip-ratios] [--skip-startup] [--fail-once]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import run_load  # noqa: E402
from tests.conftest import DOG_PHOTOS, start_server  # noqa: E402
from tests.tools.archive import breed_folders, tiny_jpegs  # noqa: E402
from tools.opt_ml import write_job  # noqa: E402

LOADED = re.compile(r"model \S+ loaded on")


def train_artifact(tmp: Path) -> Path:
    """The model dir of a short real training job of ResNet50 (see the module docstring)."""
    photos = tiny_jpegs(400)
    data = tmp / "data"
    for split, per_class in (("train", 2), ("valid", 1), ("test", 1)):
        for c, folder in enumerate(breed_folders()):
            (data / split / folder).mkdir(parents=True)
            for i in range(per_class):
                (data / split / folder / f"{i}.jpg").write_bytes(photos[(c * 3 + i) % 400])
    base = write_job(tmp / "ml", {s: data / s for s in ("train", "valid", "test")},
                     {"arch": "resnet50", "epochs": 1, "batch-size": 32, "image-size": 224,
                      "pretrained": False, "num-workers": 1, "debugger-rules": False,
                      "profiler-steps": 0, "int8-calibration-images": 64})
    log = tmp / "train.log"
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "container" / "train")], cwd=ROOT,
                          env=dict(os.environ, SAGEMAKER_BASE_DIR=str(base),
                                   PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT)),
                          stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"the training job failed:\n{log.read_text()[-3000:]}")
    print(f"trained the ResNet50 artifact in {time.monotonic() - start:.0f} s", flush=True)
    return base / "model"


def fresh_env(tmp: Path, name: str, **env: str) -> dict:
    """A fresh host's caches: an empty compile store and inductor cache."""
    return {"SERVE_COMPILE_CACHE_DIR": str(tmp / f"{name}-compiled"),
            "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"{name}-inductor"),
            "SERVE_METRICS": "off", **env}


def loaded_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if LOADED.search(line)]


def wait_loaded(log: Path, count: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while len(loaded_lines(log)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} workers not loaded in {timeout} s:\n"
                             f"{log.read_text()[-3000:]}")
        time.sleep(0.1)


def start(tree: Path, model_dir: Path, log: Path, env: dict, workers: int) -> tuple:
    """A server of ``tree``; returns it, seconds to the first /ping 200 and seconds until
    every worker logged its model loaded."""
    begin = time.monotonic()
    server = start_server(model_dir, log, env={**env, "SAGEMAKER_MODEL_SERVER_WORKERS":
                                               str(workers)}, wait_ready=1800, root=tree)
    first = time.monotonic() - begin
    wait_loaded(log, workers)
    if env.get("SERVE_COMPILE") != "off" and "all compiled programs in use" in (
            tree / "serve" / "lifecycle.py").read_text():
        server.wait_compiled(workers, timeout=1800)  # a tree that serves while compiling
    return server, first, time.monotonic() - begin


def post_status(url: str, body: bytes, timeout: float = 90) -> int:
    request = urllib.request.Request(url + "/invocations", data=body,
                                     headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status
    except OSError:
        return 0


def respawn_s(server, log: Path, workers: int) -> float:
    """Seconds from SIGKILL of a worker under 16 clients to the next 200 (1 worker) or to its
    replacement's "loaded" line (2 workers)."""
    body = DOG_PHOTOS[0].read_bytes()
    stop, killed, first_ok = threading.Event(), [None], [None]

    def client():
        while not stop.is_set():
            status = post_status(server.url, body)
            if status == 200 and killed[0] is not None and first_ok[0] is None:
                first_ok[0] = time.monotonic()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    before = len(loaded_lines(log))
    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    killed[0] = time.monotonic()
    deadline = killed[0] + 600
    while time.monotonic() < deadline:
        if workers == 1 and first_ok[0] is not None:
            break
        if workers > 1 and len(loaded_lines(log)) > before:
            first_ok[0] = time.monotonic()
            break
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(120)
    return (first_ok[0] or float("nan")) - killed[0]


def ratio_c8_c1(url: str, requests: int, rounds: int = 3) -> tuple[float, float]:
    """Requests/s at concurrency 1 and 8, summed over alternating rounds."""
    bodies = [p.read_bytes() for p in DOG_PHOTOS]
    run_load(url, bodies, 8, 8)  # warm
    t1 = t8 = 0.0
    for _ in range(rounds):
        t1 += requests / run_load(url, bodies, requests, 1)[1]
        t8 += requests / run_load(url, bodies, requests, 8)[1]
    return rounds * requests / t1, rounds * requests / t8


FULL_SPEED = 0.9  # of the warm rate
BURST, BURST_CONCURRENCY, BURST_EVERY_S = 24, 8, 3.0


def ship(tree: Path, model_dir: Path, tmp: Path) -> Path | None:
    """A copy of ``model_dir`` carrying this host's compiled programs, made by ``tree``'s
    ``container/compile`` (None when that tree has none)."""
    entry = tree / "container" / "compile"
    if not entry.exists():
        return None
    shipped = tmp / f"shipped-{abs(hash(str(tree)))}"
    shutil.copytree(model_dir, shipped)
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(entry), "--input", str(shipped)], cwd=tree,
                          env=dict(os.environ, PYTHONPATH=str(tree),
                                   SERVE_COMPILE_CACHE_DIR=str(tmp / "ship-store"),
                                   TORCHINDUCTOR_CACHE_DIR=str(tmp / "ship-inductor")),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compile failed:\n{done.stderr[-3000:]}")
    print(f"{done.stdout.strip()} ({time.monotonic() - start:.0f} s)", flush=True)
    return shipped


def burst_rps(url: str, bodies: list[bytes]) -> float:
    """Requests/s of BURST requests at BURST_CONCURRENCY (all must answer 200)."""
    with ThreadPoolExecutor(BURST_CONCURRENCY) as pool:
        start = time.perf_counter()
        statuses = list(pool.map(lambda i: post_status(url, bodies[i % len(bodies)]),
                                 range(BURST)))
    if set(statuses) != {200}:
        raise SystemExit(f"a burst was answered {sorted(set(statuses))}, not only 200")
    return BURST / (time.perf_counter() - start)


def warm_rate(tree: Path, model_dir: Path, tmp: Path, workers: int) -> float:
    """Requests/s of a burst on a server whose programs are compiled (the best of 3)."""
    env = fresh_env(tmp, f"warm-{workers}-{abs(hash(str(tree)))}")
    server = start_server(model_dir, tmp / f"warm-{workers}.log",
                          env={**env, "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)},
                          wait_ready=1800, root=tree)
    try:
        if "all compiled programs in use" in (tree / "serve" / "lifecycle.py").read_text():
            server.wait_compiled(workers, timeout=1800)
        bodies = [p.read_bytes() for p in DOG_PHOTOS]
        burst_rps(server.url, bodies)
        return max(burst_rps(server.url, bodies) for _ in range(3))
    finally:
        server.stop()


class LogTimes:
    """Seconds from ``start`` to the first log line holding each pattern (polled)."""

    def __init__(self, log: Path, start: float, patterns: dict[str, str]):
        self.log, self.start, self.patterns, self.seen = log, start, patterns, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            for name, pattern in self.patterns.items():
                if name not in self.seen and pattern in text:
                    self.seen[name] = time.monotonic() - self.start

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.seen


def cold_start(tree: Path, model_dir: Path, tmp: Path, name: str, workers: int, warm: float,
               extra_env: dict | None = None, timeout: float = 900) -> dict:
    """A start on a fresh host: seconds to the first 200 and to full speed (see the module
    docstring), and when the compile's log lines appeared."""
    log = tmp / f"{name}.log"
    bodies = [p.read_bytes() for p in DOG_PHOTOS]
    begin = time.monotonic()
    times = LogTimes(log, begin, {"failed": "compile failed", "retry": "again (after",
                                  "compiled": "all compiled programs in use"})
    server = start_server(model_dir, log, env={**fresh_env(tmp, name), **(extra_env or {}),
                                               "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)},
                          wait_ready=0, root=tree)
    out = {}
    try:
        while post_status(server.url, bodies[0], timeout=60) != 200:
            if time.monotonic() - begin > timeout:
                raise SystemExit(f"{name}: no 200 in {timeout} s:\n{server.log[-3000:]}")
            time.sleep(0.05)
        out["first_200_s"] = time.monotonic() - begin
        rates = []
        while True:
            if rates:
                time.sleep(BURST_EVERY_S)
            rates.append(burst_rps(server.url, bodies))
            if rates[-1] >= FULL_SPEED * warm:
                out["full_speed_s"] = time.monotonic() - begin
                break
            if time.monotonic() - begin > timeout:
                out["full_speed_s"] = float("nan")
                break
        out["bursts"] = len(rates)
        if workers == 1 and not extra_env:
            out["respawn_s"] = respawn_s(server, log, 1)
        chosen = [line.split("precision ", 1)[1] for line in server.log.splitlines()
                  if " precision " in line][:1]
        out["chosen"] = chosen[0] if chosen else "?"
    finally:
        server.stop()
        out.update({f"log_{k}_s": v for k, v in times.stop().items()})
    return out


def measure_startup(name: str, tree: Path, model_dir: Path, tmp: Path,
                    fail_once: bool) -> dict:
    """First 200 and full speed with 1 and 2 workers, empty store and shipped packages."""
    out = {}
    shipped = ship(tree, model_dir, tmp)
    for workers in (1, 2):
        warm = out[f"warm_{workers}w_rps"] = warm_rate(tree, shipped or model_dir, tmp, workers)
        print(f"{name}: {workers} worker(s): warm rate {warm:.1f} req/s", flush=True)
        for store, model in (("empty", model_dir), ("shipped", shipped)):
            if model is None:
                continue
            r = cold_start(tree, model, tmp, f"{name}-{store}-w{workers}", workers, warm)
            out[f"{store}_{workers}w"] = r
            print(f"{name}: {workers} worker(s), {store} store: first 200 "
                  f"{r['first_200_s']:.1f} s, full speed {r['full_speed_s']:.1f} s"
                  + (f", respawn {r['respawn_s']:.1f} s" if "respawn_s" in r else ""),
                  flush=True)
    if fail_once:
        counter, compiler = tmp / "calls", tmp / "flaky-g++"
        compiler.write_text(f"#!/bin/sh\nif [ ! -e {counter} ]; then touch {counter}; "
                            "echo 'g++: fatal error: injected' >&2; exit 1; fi\n"
                            "exec g++ \"$@\"\n")
        compiler.chmod(0o755)
        r = out["fail_once_1w"] = cold_start(
            tree, model_dir, tmp, f"{name}-fail-once", 1, out["warm_1w_rps"],
            {"CXX": str(compiler), "SERVE_COMPILE_RETRY_S": "10"})
        print(f"{name}: a compile that fails once: first 200 {r['first_200_s']:.1f} s, "
              f"failure said {r.get('log_failed_s', float('nan')):.1f} s, retry "
              f"{r.get('log_retry_s', float('nan')):.1f} s, compiled "
              f"{r.get('log_compiled_s', float('nan')):.1f} s, full speed "
              f"{r['full_speed_s']:.1f} s", flush=True)
    return out


PRECISIONS = (("fp32", {"SERVE_PRECISION": "fp32", "SERVE_COMPILE": "on"}),
              ("bf16", {"SERVE_PRECISION": "bf16", "SERVE_COMPILE": "on"}),
              ("int8", {"SERVE_PRECISION": "int8", "SERVE_COMPILE": "on"}),
              ("fp32 eager", {"SERVE_PRECISION": "fp32", "SERVE_COMPILE": "off"}))


def measure_ratios(trees: list, model_dir: Path, tmp: Path, requests: int, results: dict) -> None:
    """Requests/s at concurrency 1 and 8 for each precision, the trees one after the other
    within a precision, so that a shared machine's slow spells fall on both."""
    for label, extra in PRECISIONS:
        for name, tree in trees:
            env = fresh_env(tmp, f"{name}-ratios")  # one store per tree: each precision once
            log = tmp / f"{name}-{label.replace(' ', '-')}.log"
            server, _, _ = start(tree, model_dir, log, {**env, **extra}, 1)
            try:
                c1, c8 = results[name][f"rps_{label}"] = ratio_c8_c1(server.url, requests)
            finally:
                server.stop()
            print(f"{name}: {label}: c1 {c1:.1f} req/s, c8 {c8:.1f} req/s, c8/c1 "
                  f"{c8 / c1:.3f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to measure first")
    parser.add_argument("--model-dir", type=Path, help="an artifact to use instead of training")
    parser.add_argument("--requests", type=int, default=48, help="requests per c1/c8 round")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--fail-once", action="store_true",
                        help="also a start whose first compile fails")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or train_artifact(tmp)
        trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [
            ("this", ROOT)]
        results = {name: ({} if args.skip_startup else measure_startup(
            name, tree, model_dir, tmp, args.fail_once)) for name, tree in trees}
        if not args.skip_ratios:
            measure_ratios(trees, model_dir, tmp, args.requests, results)
    print(f"ResNet50 trained by the job, {os.cpu_count()} CPUs (shared: read the ratios)")
    for name, r in results.items():
        chosen = [v["chosen"] for v in r.values() if isinstance(v, dict) and "chosen" in v]
        print(f"== {name}: {chosen[0] if chosen else ''}")
        for key, value in ((k, v) for k, v in r.items() if isinstance(v, dict)):
            print(f"{key}: first 200 {value['first_200_s']:.1f} s (goal <= 10 s), full speed "
                  f"{value['full_speed_s']:.1f} s (goal <= 60 s empty, <= 10 s shipped)"
                  + (f", respawn {value['respawn_s']:.1f} s" if "respawn_s" in value else "")
                  + "".join(f", {k[4:-2]} at {v:.1f} s" for k, v in value.items()
                            if k.startswith("log_")))
        for key, (c1, c8) in ((k, v) for k, v in r.items() if k.startswith("rps_")):
            print(f"{key[4:]:>10}: c1 {c1:6.1f} req/s, c8 {c8:6.1f} req/s, c8/c1 {c8 / c1:.3f} "
                  f"(goal >= 1)")
    if len(results) == 2:
        base, this = results["baseline"], results["this"]
        print("== this / baseline")
        for key in sorted(k for k in this if k in base and isinstance(this[k], dict)):
            for field in ("first_200_s", "full_speed_s"):
                print(f"{key} {field}: {this[key][field] / base[key][field]:.3f}")
        for key in sorted(k for k in this if k in base and k.startswith("rps_")):
            print(f"{key[4:]} c8 req/s: {this[key][1] / base[key][1]:.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
