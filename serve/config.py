"""Serving settings from the environment, with SageMaker's names and defaults in one place.

Sources: AWS docs "Use your own inference code with hosting services" (port 8080, /ping within
2 s, /invocations within 60 s, SIGTERM then SIGKILL 30 s later) and "Use your own inference code
with batch transform" (SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY,
SAGEMAKER_MAX_CONCURRENT_TRANSFORMS); the model server variables are the convention of AWS's own
containers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from contract import precisions
from contract.artifact import MAX_BATCH
from serve.batch_transform import suggested_concurrency
from serve.precision import DEFAULT_TOLERANCE_POINTS

PORT = 8080
MODEL_DIR = "/opt/ml/model"
DEFAULT_MAX_PAYLOAD_MB = 6  # real-time endpoints accept bodies under 6 MB
DEFAULT_TIMEOUT_S = 60  # an invocation must finish within 60 s
# Batch transform (SAGEMAKER_BATCH=true): InvocationsTimeoutInSeconds' default; transform jobs
# and asynchronous endpoints allow up to an hour and 1 GB (asynchronous inference's payload).
DEFAULT_BATCH_TIMEOUT_S = 600
MAX_TIMEOUT_S = 3600
ASYNC_MAX_PAYLOAD_MB = 1024
# Request bodies one worker holds at once, counted before each is read (JSON bodies three times:
# the body, its parsed strings and their decoded images; JSON Lines twice), so large payloads
# wait their turn instead of adding up. At least one largest body always fits.
DEFAULT_BODY_MEMORY_MB = 1024
BODY_COPIES = {"json": 3, "jsonlines": 2, "image": 1}
# A body must arrive at 10 MB/s at least (and within DEFAULT_BODY_TIMEOUT_S for small ones).
BODY_MB_PER_S = 10
DEFAULT_MAX_LINES = 10_000  # lines of one JSON Lines request
GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
DEFAULT_TOP_K = 5
DEFAULT_MAX_PIXELS = 50_000_000  # 4x a 12 MP phone photo; larger is a decompression bomb here
# The model's input before its centre crop is at most this big (6 MB as RGB): a 30:1 panorama at
# resize 256. A 1x50,000 strip would be 256x12,800,000 (9.8 GB).
DEFAULT_MAX_RESIZED_PIXELS = 2_000_000
DEFAULT_DECODE_MEMORY_MB = 512  # decoded frames held at once by one worker's request threads
DEFAULT_MAX_IMAGES_PER_REQUEST = 64
# One request may take at most this share of the deadline at the worker's measured cost per image.
REQUEST_DEADLINE_SHARE = 0.5
# Requests one worker holds at once (decoding, queued or running). A GPU worker must hold a whole
# instance's worth of SageMaker's usual 64 concurrent invocations (gunicorn does not spread
# connections evenly over workers) while its device has room; a CPU worker's queue beyond 32
# would only wait past its deadline.
DEFAULT_MAX_QUEUE = {"cpu": 32, "gpu": 128}
# Batching defaults per host kind (benchmarks/README.md, "Serving"): on the CPU a batch larger
# than 8 gained little per image and made each request wait longer; a GPU wants larger batches
# (not yet measured on one: 32 is TorchServe's and Triton's usual starting point for ResNet50).
DEFAULT_MAX_BATCH = {"cpu": 8, "gpu": 32}
DEFAULT_MAX_BATCH_DELAY_MS = {"cpu": 10, "gpu": 5}
# gunicorn threads beyond max_queue: /ping and refusals never wait for one (a refused request's
# unread body is drained for at most REFUSAL_DRAIN_S first).
SPARE_THREADS = 16
REFUSAL_DRAIN_S = 1.0
# A request's body must arrive within this many seconds (and the invocation's deadline): a
# client sending a byte a second holds a place and a thread no longer than that.
DEFAULT_BODY_TIMEOUT_S = 20
METRICS_NAMESPACE = "SageMakerDogBreeds"  # CloudWatch namespace of serve's EMF metrics
CPU_THREADS_PER_WORKER = 4  # ResNet50 on CPU scales poorly past ~4 intra-op threads
# Cores per compile helper on a CPU host: a compile is mostly one thread of Python and the C++
# compiler, and helpers yield to serving (nice), so one per core; a GPU host's helpers share
# its one device, so one there.
CPU_CORES_PER_COMPILE = 1


def compile_cache_dir(environ: dict | None = None) -> str:
    """SERVE_COMPILE_CACHE_DIR: where a host's workers keep the compiled programs
    (serve/compiled.py). By default a folder in the user's own cache (XDG_CACHE_HOME, else
    ~/.cache), never a fixed path under /tmp that another user could make first: shared by a
    container's workers, kept across a worker's death, and writable (/opt/ml/model may be
    read-only on SageMaker)."""
    env = os.environ if environ is None else environ
    if env.get("SERVE_COMPILE_CACHE_DIR"):
        return env["SERVE_COMPILE_CACHE_DIR"]
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                      ".cache")
    return os.path.join(cache, "sagemaker-dog-breeds", "compiled")


def default_compile_processes(gpus: int, cpus: int) -> int:
    """Compile helpers at once: one per CPU_CORES_PER_COMPILE cores (at least 1), one on a
    GPU host."""
    return 1 if gpus else max(1, cpus // CPU_CORES_PER_COMPILE)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def gpu_count() -> int:
    """GPUs the driver shows this container, through NVML (nvidia-ml-py). Not through torch:
    the gunicorn master reads this, and importing torch there would delay the port opening by
    seconds (SageMaker wants connections accepted within 250 ms). Whether torch can use them is
    container/gpu_check.py's job, before the server starts. A CUDA_VISIBLE_DEVICES list
    narrows them (NVML itself ignores it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU: all mean 0
        return 0
    if visible:
        return min(count, len([d for d in visible.split(",") if d.strip()]))
    return count


def default_workers(gpus: int, cpus: int) -> int:
    """One worker per GPU (each pinned to its own). On CPU, one worker per
    CPU_THREADS_PER_WORKER cores (at least 1): a single forward pass already uses every intra-op
    thread it is given, so more workers than that add contention, not throughput."""
    if gpus:
        return gpus
    return max(1, cpus // CPU_THREADS_PER_WORKER)


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    model_dir: str
    workers: int
    threads_per_worker: int  # torch intra-op threads in each worker (CPU); its decodes at once
    timeout_s: int
    max_payload_bytes: int
    body_timeout_s: int
    max_pixels: int
    max_resized_pixels: int
    decode_memory_bytes: int
    max_images_per_request: int
    max_batch_size: int
    max_batch_delay_ms: int
    max_queue: int
    batch_strategy: str
    max_concurrent_transforms: int
    port: int
    gpus: int
    precision: str = "auto"  # SERVE_PRECISION: auto or one of contract.precisions.NAMES
    compile: str = "auto"  # SERVE_COMPILE: auto, on, off
    precision_tolerance_points: float = DEFAULT_TOLERANCE_POINTS  # SERVE_PRECISION_TOLERANCE
    metrics: bool = True  # SERVE_METRICS: on or off
    metrics_interval_s: int = 60  # SERVE_METRICS_INTERVAL_S
    metrics_namespace: str = METRICS_NAMESPACE  # SERVE_METRICS_NAMESPACE
    endpoint_name: str = "local"  # SERVE_ENDPOINT_NAME (deploy.py sets it)
    variant_name: str = "AllTraffic"  # SERVE_VARIANT_NAME
    drift_window: int = 1000  # SERVE_DRIFT_WINDOW: images the drift scores look back on
    batch: bool = False  # SAGEMAKER_BATCH=true: a batch transform job's container
    body_memory_bytes: int = DEFAULT_BODY_MEMORY_MB * 1024 * 1024  # SERVE_BODY_MEMORY_MB
    max_lines_per_request: int = DEFAULT_MAX_LINES  # SERVE_MAX_LINES_PER_REQUEST
    compile_cache_dir: str = ""  # SERVE_COMPILE_CACHE_DIR (compile_cache_dir)
    compile_processes: int = 1  # SERVE_COMPILE_PROCESSES: compile helpers at once
    compile_retry_s: int = 60  # SERVE_COMPILE_RETRY_S: first back-off after a failed compile

    @property
    def threads(self) -> int:
        """gunicorn threads per worker: every request the queue admits, and spares."""
        return self.max_queue + SPARE_THREADS

    @classmethod
    def from_env(cls, environ: dict | None = None, gpus: int | None = None) -> "Settings":
        """Read the settings (``gpus``: the GPU count to assume instead of asking NVML).

        Raises:
            ValueError: a variable that is not a positive integer where one is needed, or out
                of its range (a max batch size over the programs' ``MAX_BATCH``).
        """
        env = os.environ if environ is None else environ

        def positive(name: str, default: int, minimum: int = 1, maximum: int | None = None,
                     why: str = "") -> int:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise ValueError(f"{name}={raw!r} must be at least {minimum}")
            if maximum is not None and value > maximum:
                raise ValueError(f"{name}={raw!r} must be at most {maximum}"
                                 + (f" ({why})" if why else ""))
            return value

        def choice(name: str, allowed: tuple[str, ...]) -> str:
            value = (env.get(name) or allowed[0]).strip().lower()
            if value not in allowed:
                raise ValueError(f"{name}={env.get(name)!r}: expected one of {', '.join(allowed)}")
            return value

        def points(name: str, default: float) -> float:
            raw = env.get(name)
            try:
                value = default if raw in (None, "") else float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if not 0 <= value <= 100:
                raise ValueError(f"{name}={raw!r} must be from 0 to 100 (accuracy points)")
            return value

        gpus = gpu_count() if gpus is None else gpus
        cpus = _cpu_count()
        kind = "gpu" if gpus else "cpu"
        workers = positive("SAGEMAKER_MODEL_SERVER_WORKERS", default_workers(gpus, cpus))
        max_batch_size = positive("SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE",
                                  DEFAULT_MAX_BATCH[kind], maximum=MAX_BATCH,
                                  why="the largest batch a model program takes, "
                                      "contract/artifact.py")
        # Batch transform: the job's timeout (deploy.py passes InvocationsTimeoutInSeconds) and
        # payload; the job's concurrency, or ours, and a queue that never refuses it, since one
        # worker may be sent every concurrent request.
        batch = (env.get("SAGEMAKER_BATCH") or "").strip().lower() == "true"
        payload_mb = positive("SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB,
                              maximum=ASYNC_MAX_PAYLOAD_MB,
                              why="asynchronous inference's 1 GB")
        concurrent = positive("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
                              suggested_concurrency(workers, max_batch_size, payload_mb))
        return cls(
            model_dir=env.get("SM_MODEL_DIR") or MODEL_DIR,
            workers=workers,
            threads_per_worker=max(1, cpus // workers),
            timeout_s=positive("SAGEMAKER_MODEL_SERVER_TIMEOUT",
                               DEFAULT_BATCH_TIMEOUT_S if batch else DEFAULT_TIMEOUT_S,
                               maximum=MAX_TIMEOUT_S, why="an hour: transform jobs' and "
                                                         "asynchronous endpoints' limit"),
            max_payload_bytes=payload_mb * 1024 * 1024,
            body_timeout_s=positive("SERVE_BODY_TIMEOUT_S", max(
                DEFAULT_BODY_TIMEOUT_S, math.ceil(payload_mb / BODY_MB_PER_S))),
            max_pixels=positive("SERVE_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
            max_resized_pixels=positive("SERVE_MAX_RESIZED_PIXELS", DEFAULT_MAX_RESIZED_PIXELS),
            decode_memory_bytes=positive("SERVE_DECODE_MEMORY_MB", DEFAULT_DECODE_MEMORY_MB)
            * 1024 * 1024,
            max_images_per_request=positive("SERVE_MAX_IMAGES_PER_REQUEST",
                                            DEFAULT_MAX_IMAGES_PER_REQUEST),
            max_batch_size=max_batch_size,
            max_batch_delay_ms=positive("SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS",
                                        DEFAULT_MAX_BATCH_DELAY_MS[kind], minimum=0),
            max_queue=positive("SAGEMAKER_MODEL_SERVER_MAX_QUEUE", max(
                DEFAULT_MAX_QUEUE[kind], concurrent) if batch else DEFAULT_MAX_QUEUE[kind]),
            batch_strategy=env.get("SAGEMAKER_BATCH_STRATEGY") or "SINGLE_RECORD",
            max_concurrent_transforms=concurrent,
            port=positive("SAGEMAKER_BIND_TO_PORT", PORT),
            gpus=gpus,
            precision=choice("SERVE_PRECISION", ("auto",) + precisions.NAMES),
            compile=choice("SERVE_COMPILE", ("auto", "on", "off")),
            precision_tolerance_points=points("SERVE_PRECISION_TOLERANCE",
                                              DEFAULT_TOLERANCE_POINTS),
            metrics=choice("SERVE_METRICS", ("on", "off")) == "on",
            metrics_interval_s=positive("SERVE_METRICS_INTERVAL_S", 60),
            metrics_namespace=env.get("SERVE_METRICS_NAMESPACE") or METRICS_NAMESPACE,
            endpoint_name=env.get("SERVE_ENDPOINT_NAME") or "local",
            variant_name=env.get("SERVE_VARIANT_NAME") or "AllTraffic",
            drift_window=positive("SERVE_DRIFT_WINDOW", 1000, minimum=10),
            batch=batch,
            body_memory_bytes=positive("SERVE_BODY_MEMORY_MB", max(
                DEFAULT_BODY_MEMORY_MB, BODY_COPIES["json"] * payload_mb)) * 1024 * 1024,
            max_lines_per_request=positive("SERVE_MAX_LINES_PER_REQUEST", DEFAULT_MAX_LINES),
            compile_cache_dir=compile_cache_dir(env),
            compile_processes=positive("SERVE_COMPILE_PROCESSES",
                                       default_compile_processes(gpus, cpus)),
            compile_retry_s=positive("SERVE_COMPILE_RETRY_S", 60),
        )
