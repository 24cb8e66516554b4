#!/usr/bin/env python3
"""Start-up and respawn of the real server, and whether batching across requests pays, per
precision.

A ResNet50 artifact is made by a short run of the real training entry (``container/train``:
133 breed folders of small photos cut from the sample dog photos, random init, one epoch at 224
px, so the manifest, the precision record and the int8 program are the job's own). Then, on a
fresh compile store and inductor cache each time (a fresh host):
- start-up to the first /ping 200, and until every worker logged its model loaded, with 1 and
  with 2 workers (SERVE_PRECISION as chosen for this host, compiled);
- a respawn under load: 16 clients, SIGKILL of the worker (1 worker) 3 s in, seconds from the
  kill to the next 200; with 2 workers, from the kill to the replacement's "loaded" line;
- per precision (fp32, bf16, int8 compiled; fp32 eager), requests/s at concurrency 1 and 8, in
  alternating rounds, and their ratio (the goal: never below 1); with ``--baseline``, the two
  trees' servers one after the other for each precision.

``--baseline DIR`` runs the same measurements against another checkout's ``container/serve``
in the same run (e.g. ``git worktree add /tmp/main main``), for before/after ratios on a shared
machine.

    .venv/bin/python benchmarks/bench_startup.py [--baseline DIR] [--model-dir DIR]
        [--requests 48] [--skip-ratios] [--skip-startup]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


def measure_startup(name: str, tree: Path, model_dir: Path, tmp: Path) -> dict:
    """Start-up with 1 and 2 workers on fresh caches, and a respawn under load, of ``tree``."""
    out = {}
    for workers in (1, 2):
        log = tmp / f"{name}-w{workers}.log"
        server, first, every = start(tree, model_dir, log, fresh_env(tmp, f"{name}-w{workers}"),
                                     workers)
        try:
            out[f"startup_{workers}w_first_ping_s"] = first
            out[f"startup_{workers}w_all_loaded_s"] = every
            out[f"respawn_{workers}w_s"] = respawn_s(server, log, workers)
            chosen = [line.split("precision ", 1)[1] for line in log.read_text().splitlines()
                      if " precision " in line][:1]
            out["chosen"] = chosen[0] if chosen else "?"
        finally:
            server.stop()
        print(f"{name}: {workers} worker(s): first /ping 200 {first:.1f} s, all loaded "
              f"{every:.1f} s, respawn {out[f'respawn_{workers}w_s']:.1f} s", flush=True)
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or train_artifact(tmp)
        trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [
            ("this", ROOT)]
        results = {name: ({} if args.skip_startup else measure_startup(name, tree, model_dir,
                                                                        tmp))
                   for name, tree in trees}
        if not args.skip_ratios:
            measure_ratios(trees, model_dir, tmp, args.requests, results)
    print(f"ResNet50 trained by the job, {os.cpu_count()} CPUs (shared: read the ratios)")
    for name, r in results.items():
        print(f"== {name}: {r.get('chosen', '')}")
        if "startup_1w_all_loaded_s" in r:
            for workers in (1, 2):
                print(f"{workers} worker(s): first /ping 200 "
                      f"{r[f'startup_{workers}w_first_ping_s']:.1f} s, all workers loaded "
                      f"{r[f'startup_{workers}w_all_loaded_s']:.1f} s, respawn "
                      f"{r[f'respawn_{workers}w_s']:.1f} s")
            print(f"2 workers all loaded - 1 worker loaded: "
                  f"{r['startup_2w_all_loaded_s'] - r['startup_1w_all_loaded_s']:+.1f} s "
                  f"(goal <= +3 s); respawn (1 worker, kill to next 200): "
                  f"{r['respawn_1w_s']:.1f} s (goal <= 5 s)")
        for key, (c1, c8) in ((k, v) for k, v in r.items() if k.startswith("rps_")):
            print(f"{key[4:]:>10}: c1 {c1:6.1f} req/s, c8 {c8:6.1f} req/s, c8/c1 {c8 / c1:.3f} "
                  f"(goal >= 1)")
    if len(results) == 2:
        base, this = results["baseline"], results["this"]
        print("== this / baseline")
        for key in sorted(k for k in this if k in base and k.endswith("_s")):
            print(f"{key}: {this[key] / base[key]:.3f}")
        for key in sorted(k for k in this if k in base and k.startswith("rps_")):
            print(f"{key[4:]} c8 req/s: {this[key][1] / base[key][1]:.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
