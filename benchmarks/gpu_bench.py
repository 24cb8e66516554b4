#!/usr/bin/env python3
"""Training and serving throughput on one GPU host, every figure measured in the same run.

What it prints (benchmarks/README.md, "GPU hosts"), each phase with the GPU's mean utilisation
while it ran (NVML, sampled every 0.1 s):
- decode: photos per second per core of the training decode + augmentation (the DataLoader
  worker's work) and of serve's decode (a request thread's), one thread each; and of nvJPEG
  (torchvision.io.decode_jpeg on the GPU, batches of 128);
- bare step: images/s of the training step alone (ResNet50 forward, backward and SGD under the
  loop's autocast, on uint8 batches already on the GPU): the ceiling the pipeline is held to;
- trainer: images/s of an epoch of the real train.loop.Trainer over JPEGs (the sample dog
  photos, hard-linked into an ImageFolder of 133 classes), at each batch size and DataLoader
  worker count, and its ratio to the bare step;
- serve: images/s, p50 and p99 ms of the real server (container/serve: gunicorn, the batcher,
  the default precision, eager) at concurrency 64 with one image/jpeg photo per request, for
  each worker count (all workers share the one GPU), with where a request's time goes: the
  mean decode wall and CPU ms, queue ms, compute ms (copy in, forward, copy out) and the
  request thread's CPU ms in the app, from the access log's tail;
- forward: the served model's own images/s at the max batch (32) eager, compiled as serve
  compiles it (AOTInductor, its sizes 1 to 32: serve/compiled.py), and compiled with CUDA graphs
  (torch.compile, mode reduce-overhead), with the compile times, and the
  classifier's two-batches-in-flight launch against one batch at a time.

``--dry-run`` runs every phase that needs no GPU at toy sizes on the CPU (resnet18, 64 px, a
few photos): CI runs it so the script cannot rot. The full run (ResNet50, 224 px) wants a GPU
host; it skips a phase that would not end inside ``--budget-s`` and writes what it measured to
``--out`` after each phase.

    benchmarks/gpu_bench.sh [--dry-run] [--out DIR] [--budget-s 480]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from contract import tensors  # noqa: E402
from benchmarks.bench_serve import access_lines  # noqa: E402
from serve.record import TIMINGS_MS  # noqa: E402
from train import data, hyperparameters, loop, model as model_lib  # noqa: E402
from train.export import artifact  # noqa: E402
from train.step import amp_dtype  # noqa: E402

PHOTOS = sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))
SERVE_ENTRY = ROOT / "container" / "serve"
CLIENT = ROOT / "benchmarks" / "load_client.py"
BIG = 10**9  # no pixel limit in the decode measurements


@dataclass(frozen=True)
class Sizes:
    """One run's sizes: the full run's or the dry run's."""

    arch: str
    image_size: int
    classes: int
    train_images: int
    batch_sizes: tuple[int, ...]
    worker_counts: tuple[int, ...]
    concurrency: int
    serve_seconds: float
    serve_workers: tuple[int, ...]
    decode_images: int
    bare_steps: int

    @classmethod
    def for_run(cls, dry: bool, cores: int) -> "Sizes":
        if dry:
            return cls("resnet18", 64, 4, 64, (16, 32), (1, 2), 4, 2.0, (1,), 28, 3)
        workers = tuple(sorted({max(1, cores - 1), min(8, max(1, cores - 1))}, reverse=True))
        return cls("resnet50", 224, 133, 12_800, (128, 256), workers, 64, 15.0, (1, 2), 400, 20)


class GPUSampler:
    """GPU utilisation (%) sampled every ``interval_s`` on a thread (NVML); ``during(name)``
    records the mean of the samples taken inside the block."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self.by_phase: dict[str, float | None] = {}
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount():
                self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML, no GPU: no utilisation
            self._handle = None
        self._stop = threading.Event()
        if self._handle is not None:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            except Exception:  # noqa: BLE001
                continue
            self.samples.append((time.monotonic(), float(util)))

    @contextlib.contextmanager
    def during(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            end = time.monotonic()
            inside = [u for t, u in self.samples if start <= t <= end]
            self.by_phase[name] = round(statistics.fmean(inside), 1) if inside else None

    def close(self) -> None:
        self._stop.set()


class Bench:
    """Runs the phases within the budget, keeps their results, writes them after each."""

    def __init__(self, out: Path, budget_s: float, sampler: GPUSampler):
        self.out, self.budget_s, self.sampler = out, budget_s, sampler
        self.started = time.monotonic()
        self.results: dict[str, dict] = {}

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def run(self, name: str, estimate_s: float, fn, *args) -> dict | None:
        """Run ``fn(*args)`` (a dict of figures) as phase ``name`` unless fewer than
        ``estimate_s`` seconds of the budget are left; a failing phase is recorded with its
        error, and the next one runs."""
        if self.left_s() < estimate_s:
            self.results[name] = {"skipped": f"{self.left_s():.0f} s of the budget left, "
                                             f"about {estimate_s:.0f} s needed"}
            print(f"[{name}] skipped: {self.results[name]['skipped']}", flush=True)
            return None
        print(f"[{name}] ...", flush=True)
        start = time.monotonic()
        try:
            with self.sampler.during(name):
                result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - report it, go on with the next phase
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["seconds"] = round(time.monotonic() - start, 1)
        result["gpu_util_percent"] = self.sampler.by_phase.get(name)
        self.results[name] = result
        print(f"[{name}] {json.dumps(result)}", flush=True)
        (self.out / "gpu_bench.json").write_text(json.dumps(self.results, indent=1))
        return result


# ---------------------------------------------------------------- data
def image_folder(root: Path, n_images: int, classes: int) -> Path:
    """An ImageFolder of ``n_images`` photos (hard links to the sample photos, in turn) over
    ``classes`` class folders."""
    source = root / "photos"
    source.mkdir(parents=True)
    originals = [Path(shutil.copy(p, source / p.name)) for p in PHOTOS]
    for i in range(n_images):
        folder = root / "train" / f"{i % classes + 1:03d}.Breed_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(originals[i % len(originals)], folder / f"{i:06d}.jpg")
    for c in range(classes):
        folder = root / "valid" / f"{c + 1:03d}.Breed_{c}"
        folder.mkdir(parents=True)
        os.link(originals[c % len(originals)], folder / f"{c:06d}.jpg")
    return root


# ---------------------------------------------------------------- phases
def decode_phase(sizes: Sizes, folder: Path, device: torch.device) -> dict:
    from serve.decode import decode
    from contract.preprocess import Geometry

    pre = data.Preprocess.for_size(sizes.image_size)
    classes = sorted(p.name for p in (folder / "train").iterdir())
    ds = data.ChannelDataset(str(folder / "train"), {c: i for i, c in enumerate(classes)},
                             pre.train_transform(0.25), 0, 0, draft=pre.train_draft(0.25))
    n = min(sizes.decode_images, len(ds))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker's one thread
    try:
        start = time.perf_counter()
        for i in range(n):
            ds[(i, i)]
        train_rate = n / (time.perf_counter() - start)
        bodies = [p.read_bytes() for p in PHOTOS]
        geometry = Geometry(pre.resize, pre.crop)
        start = time.perf_counter()
        for i in range(n):
            decode(bodies[i % len(bodies)], geometry, BIG, BIG)
        serve_rate = n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    result = {"train_decode_augment_per_core": round(train_rate, 1),
              "serve_decode_per_core": round(serve_rate, 1)}
    if device.type == "cuda":
        import torchvision

        encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in bodies]
        batch = [encoded[i % len(encoded)] for i in range(128)]
        torchvision.io.decode_jpeg(batch, device=device)  # warm-up: nvJPEG's handles
        torch.cuda.synchronize()
        rounds = 10
        start = time.perf_counter()
        for _ in range(rounds):
            torchvision.io.decode_jpeg(batch, device=device)
        torch.cuda.synchronize()
        result["gpu_nvjpeg_decode"] = round(rounds * len(batch) / (time.perf_counter() - start), 1)
    return result


def bare_step_phase(sizes: Sizes, batch: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    net = model_lib.build(sizes.arch, sizes.classes).to(device)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    s = sizes.image_size
    x = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, sizes.classes, (batch,), device=device)
    mean, std = tensors.mean_std(data.IMAGENET_MEAN, data.IMAGENET_STD, device)
    dtype = amp_dtype(device) if cuda else torch.bfloat16
    torch.backends.cudnn.benchmark = True

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss = loss_fn(net(tensors.normalise(x, mean, std)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(sizes.bare_steps):
        step()
    sync(device)
    rate = sizes.bare_steps * batch / (time.perf_counter() - start)
    return {"batch": batch, "images_per_second": round(rate, 1),
            "autocast": str(dtype).replace("torch.", "") if cuda else "none (CPU)"}


def trainer_phase(sizes: Sizes, folder: Path, work: Path, batch: int, workers: int,
                  bench: Bench, name: str) -> dict:
    hp = hyperparameters.parse({"arch": sizes.arch, "pretrained": False, "epochs": 2,
                                "batch-size": batch, "num-workers": workers,
                                "image-size": sizes.image_size, "debugger-rules": False,
                                "int8-calibration-images": 0})
    run_dir = Path(tempfile.mkdtemp(dir=work))
    job = loop.Job(channels={"train": str(folder / "train"), "valid": str(folder / "valid")},
                   hyperparameters=hp, model_dir=str(run_dir / "model"),
                   output_data_dir=str(run_dir / "data"), checkpoint_dir=str(run_dir / "ckpt"),
                   input_config_dir=str(run_dir / "config"))
    trainer = loop.Trainer(job, loop.Dist())
    try:
        warm = trainer.train_epoch(0)  # workers' first batches, cuDNN's algorithm search
        with bench.sampler.during(name + " (measured epoch)"):
            measured = trainer.train_epoch(1)
    finally:
        trainer.feed.first_pass.clear()
        del trainer
        release(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"batch": batch, "workers": workers,
            "images_per_second": round(measured["images_per_second"], 1),
            "warmup_epoch_images_per_second": round(warm["images_per_second"], 1),
            "gpu_util_measured_epoch": bench.sampler.by_phase.get(name + " (measured epoch)")}


def write_artifact(sizes: Sizes, model_dir: Path) -> None:
    """A random-weights artifact of the served shape (latency does not depend on the weights),
    with a precisions record in which every precision matches fp32, so that serve's choice
    follows the host alone (fp16 on a GPU)."""
    pre = data.Preprocess.for_size(sizes.image_size)
    net = model_lib.build(sizes.arch, sizes.classes)
    folders = [f"{i + 1:03d}.Breed_{i}" for i in range(sizes.classes)]
    artifact.write(model_dir, net, sizes.arch, folders, pre, "gpu-bench", {}, {})
    artifact.update(model_dir, {"precisions": {"evaluated_on": "none (benchmark)",
                                               "fp32": {"top1": 1.0}, "fp16": {"top1": 1.0},
                                               "bf16": {"top1": 1.0}}})


def serve_phase(sizes: Sizes, model_dir: Path, workers: int, out: Path, env: dict) -> dict:
    port = free_port()
    full_env = dict(os.environ, SM_MODEL_DIR=str(model_dir), SAGEMAKER_BIND_TO_PORT=str(port),
                    SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), PYTHONUNBUFFERED="1", **env)
    log_path = out / f"serve-{workers}w.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(SERVE_ENTRY)], env=full_env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        ready_s = wait_ready(url, proc, log_path, timeout_s=300)
        # Every worker must answer: /ping reaches one of them, so wait for each one's log line.
        while len(re.findall(r"model \S+ loaded on", log_path.read_text(errors="replace"))
                  ) < workers and time.monotonic() - start < 300:
            time.sleep(0.2)
        client = subprocess.run(
            [sys.executable, str(CLIENT), url, *map(str, PHOTOS),
             "--concurrency", str(sizes.concurrency), "--seconds", str(sizes.serve_seconds),
             "--warmup", "3", "--processes", str(min(4, sizes.concurrency))],
            capture_output=True, text=True, timeout=sizes.serve_seconds + 300, check=True)
        load = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        stop_server(proc)
        trim_log(log_path)
    text = log_path.read_text(errors="replace")
    batches = [int(b) for b in re.findall(r'"batch_size": (\d+)', text)]
    precision = re.search(r"precision (\w+), (\w+):", text)
    # Where a request's time goes, from the access log's tail (serve/record.py TIMINGS_MS): the
    # decode's wall and CPU, the queue, the batch's compute (on a GPU: copy in, forward, copy
    # out) and the request thread's CPU in the app.
    records = [r for r in access_lines(log_path, 0)[0] if r["status"] == 200]
    stages = {name: round(statistics.fmean(r.get(name, 0.0) for r in records), 2)
              for name in TIMINGS_MS} if records else None
    return {"workers": workers, "concurrency": sizes.concurrency,
            "images_per_second": load["per_second"], "p50_ms": load["p50_ms"],
            "p99_ms": load["p99_ms"], "statuses": load["statuses"], "errors": load["errors"],
            "ping_ready_s": round(ready_s, 1),
            "mean_batch_in_log_tail": round(statistics.fmean(batches), 1) if batches else None,
            "ms_per_request_in_log_tail": stages,
            "precision": f"{precision[1]} {precision[2]}" if precision else None}


def forward_phase(sizes: Sizes, model_dir: Path, device: torch.device) -> dict:
    """The served program alone at batch 32: eager, inductor, inductor with CUDA graphs; and
    the classifier's launch with two batches in flight against forward one at a time."""
    from serve import buckets
    from serve.model import Classifier
    from serve.precision import Choice

    batch, crop = 32, sizes.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
    result: dict = {"batch": batch}

    def rate(fn, rounds: int = 50) -> float:
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        sync(device)
        return round(rounds * batch / (time.perf_counter() - start), 1)

    def measure(name: str, classifier, warmups: int) -> None:
        try:
            start = time.perf_counter()
            for _ in range(warmups):  # compiles; CUDA graph trees record on a later call
                classifier.forward(images)
            sync(device)
            result[f"{name}_first_calls_s"] = round(time.perf_counter() - start, 1)
            result[f"{name}_forward"] = rate(lambda: classifier.forward(images))
            result[f"{name}_two_in_flight"] = rate(in_flight(classifier, images))
        except Exception as exc:  # noqa: BLE001 - one mode failing leaves the others' figures
            result[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]

    measure("eager", Classifier(model_dir, device, Choice("fp16", False, "bench")), 1)
    compiled = Classifier(model_dir, device, Choice("fp16", True, "bench"))
    start = time.perf_counter()
    try:
        compiled.warm_up(batch, Path(tempfile.mkdtemp(prefix="gpu-bench-compiled-")),
                          compile_here=True)
        result["inductor_compile_s"] = round(time.perf_counter() - start, 1)
        measure("inductor", compiled, 1)  # AOTInductor, as serve compiles (serve/compiled.py)
    except Exception as exc:  # noqa: BLE001 - one mode failing leaves the others' figures
        result["inductor_error"] = f"{type(exc).__name__}: {exc}"[:300]
    graphs = Classifier(model_dir, device, Choice("fp16", False, "bench"))
    graphs.compiled = {batch: torch.compile(graphs.eager, mode="reduce-overhead", dynamic=False)}
    graphs.plan = buckets.Plan({batch: 0.0}, {batch: (batch,)}, batch)
    measure("cudagraphs", graphs, 3)
    return result


def in_flight(classifier, images: np.ndarray):
    """A step of the scheduler's GPU loop: launch the next batch, then collect the last one."""
    pending = []

    def step():
        pending.append(classifier.launch([images]))
        if len(pending) > 1:
            pending.pop(0)()

    return step


# ---------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> float:
    """Seconds until /ping answers 200.

    Raises:
        RuntimeError: the server exited or was not ready in time (with its log's tail).
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-1500:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"serve not ready in {timeout_s} s: "
                       f"{log_path.read_text(errors='replace')[-1500:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def trim_log(path: Path, lines: int = 300) -> None:
    """Keep a server log's first and last lines (the access log of a long run is megabytes)."""
    text = path.read_text(errors="replace").splitlines()
    if len(text) > 2 * lines:
        text = text[:lines] + [f"... {len(text) - 2 * lines} lines ..."] + text[-lines:]
    path.write_text("\n".join(text) + "\n")


def host_facts(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        smi = shutil.which("nvidia-smi")
        if smi:
            facts["driver"] = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, check=False).stdout.strip()
    return facts


def summary(results: dict) -> str:
    """The results as the table benchmarks/README.md keeps."""
    rows = []

    def row(name: str, figure: str, util) -> None:
        rows.append(f"| {name} | {figure} | {'-' if util is None else util} |")

    for name, r in results.items():
        if "skipped" in r or "error" in r:
            row(name, r.get("skipped") or r.get("error"), None)
        elif name.startswith("trainer"):
            row(name, f"{r['images_per_second']} images/s ({r.get('of_bare', '?')} of the bare "
                      f"step)", r.get("gpu_util_measured_epoch"))
        elif name.startswith(("bare", "serve")):
            extra = (f", p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['statuses']}"
                     if name.startswith("serve") else f" ({r['autocast']})")
            row(name, f"{r['images_per_second']} images/s{extra}", r.get("gpu_util_percent"))
        else:
            row(name, ", ".join(f"{k} {v}" for k, v in r.items()
                                if k not in ("seconds", "gpu_util_percent")),
                r.get("gpu_util_percent"))
    return "\n".join(["| phase | result | GPU util % |", "|---|---|---|"] + rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="toy sizes on the CPU (what CI runs)")
    parser.add_argument("--out", default=str(ROOT / "out" / "gpu-bench"),
                        help="where gpu_bench.json and the server logs go")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds the whole run may take; phases that would not fit are "
                             "skipped")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda and not args.dry_run:
        print("no GPU: run with --dry-run on a CPU host", file=sys.stderr)
        return 2
    sizes = Sizes.for_run(args.dry_run, len(os.sched_getaffinity(0)))
    sampler = GPUSampler()
    bench = Bench(out, args.budget_s, sampler)
    bench.results["host"] = host_facts(device)
    print(json.dumps(bench.results["host"]), flush=True)
    env = {"SERVE_COMPILE": "off", "SERVE_METRICS": "off"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        folder = image_folder(work / "data", sizes.train_images, sizes.classes)
        bench.run("decode", 30, decode_phase, sizes, folder, device)
        bare = {}
        for batch in sizes.batch_sizes:
            r = bench.run(f"bare step b{batch}", 30, bare_step_phase, sizes, batch, device)
            release(device)  # the phase's model and optimizer, gone with its frame
            bare[batch] = (r or {}).get("images_per_second")
        for batch in sizes.batch_sizes:
            for workers in sizes.worker_counts:
                name = f"trainer b{batch} w{workers}"
                r = bench.run(name, 45, trainer_phase, sizes, folder, work, batch, workers,
                              bench, name)
                if r and "images_per_second" in r and bare.get(batch):
                    r["of_bare"] = round(r["images_per_second"] / bare[batch], 2)
        model_dir = work / "model"
        bench.run("artifact", 60, lambda: write_artifact(sizes, model_dir) or {})
        for workers in sizes.serve_workers:
            bench.run(f"serve c{sizes.concurrency} {workers} worker(s)", 90, serve_phase,
                      sizes, model_dir, workers, out, env)
        if cuda:
            bench.run("forward b32", 150, forward_phase, sizes, model_dir, device)
    sampler.close()
    (out / "gpu_bench.json").write_text(json.dumps(bench.results, indent=1))
    print(summary({k: v for k, v in bench.results.items() if k != "host"}), flush=True)
    failed = [k for k, v in bench.results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
