"""Serving settings from the environment, with SageMaker's names and defaults in one place.

Sources: AWS docs "Use your own inference code with hosting services" (port 8080, /ping within
2 s, /invocations within 60 s, SIGTERM then SIGKILL 30 s later) and "Use your own inference code
with batch transform" (SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY,
SAGEMAKER_MAX_CONCURRENT_TRANSFORMS); the model server variables are the convention of AWS's own
containers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PORT = 8080
MODEL_DIR = "/opt/ml/model"
DEFAULT_MAX_PAYLOAD_MB = 6  # real-time endpoints accept bodies under 6 MB
DEFAULT_TIMEOUT_S = 60  # an invocation must finish within 60 s
GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
DEFAULT_TOP_K = 5
DEFAULT_MAX_PIXELS = 50_000_000  # 4x a 12 MP phone photo; larger is a decompression bomb here
CPU_THREADS_PER_WORKER = 4  # ResNet50 on CPU scales poorly past ~4 intra-op threads


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def gpu_count() -> int:
    """GPUs the driver shows this container, through NVML (nvidia-ml-py). Not through torch:
    the gunicorn master reads this, and importing torch there would delay the port opening by
    seconds (SageMaker wants connections accepted within 250 ms). Whether torch can use them is
    container/gpu_check.py's job, before the server starts."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU: all mean 0
        return 0


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
    threads_per_worker: int  # torch intra-op threads in each worker (CPU)
    timeout_s: int
    max_payload_bytes: int
    max_pixels: int
    batch_strategy: str
    max_concurrent_transforms: int
    port: int
    gpus: int

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Settings":
        """Read the settings.

        Raises:
            ValueError: a variable that is not a positive integer where one is needed.
        """
        env = os.environ if environ is None else environ

        def positive(name: str, default: int) -> int:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer") from None
            if value < 1:
                raise ValueError(f"{name}={raw!r} must be at least 1")
            return value

        gpus = gpu_count()
        cpus = _cpu_count()
        workers = positive("SAGEMAKER_MODEL_SERVER_WORKERS", default_workers(gpus, cpus))
        return cls(
            model_dir=env.get("SM_MODEL_DIR") or MODEL_DIR,
            workers=workers,
            threads_per_worker=max(1, cpus // workers),
            timeout_s=positive("SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S),
            max_payload_bytes=positive("SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB)
            * 1024 * 1024,
            max_pixels=positive("SERVE_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
            batch_strategy=env.get("SAGEMAKER_BATCH_STRATEGY") or "SINGLE_RECORD",
            max_concurrent_transforms=positive("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", workers),
            port=positive("SAGEMAKER_BIND_TO_PORT", PORT),
            gpus=gpus,
        )
