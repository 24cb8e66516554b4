"""Serving settings from the environment: ``Settings``, filled by walking the table of
serve/settings_table.py (one row per variable, with SageMaker's names and defaults, and the
sources of their rules), and the host it reads them on.

``python -m serve.config --markdown`` prints docs/serving.md's serving table from that table.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from serve.settings_table import ROWS, Reading, markdown_table

GRACEFUL_TIMEOUT_S = 25  # SageMaker sends SIGKILL 30 s after SIGTERM
DEFAULT_TOP_K = 5
# One request may take at most this share of the deadline at the worker's measured cost per image.
REQUEST_DEADLINE_SHARE = 0.5
# gunicorn threads beyond max_queue: /ping and refusals never wait for one (a refused request's
# unread body is drained for at most REFUSAL_DRAIN_S first).
SPARE_THREADS = 16
REFUSAL_DRAIN_S = 1.0


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


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment: one field per row of
    serve/settings_table.py (whose ``store`` gives the field's unit: bytes for the MB
    variables), and two of the host."""

    model_dir: str
    workers: int
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
    precision: str  # auto or one of contract.precisions.NAMES
    compile: str  # auto, on, off
    cpu_turns: bool  # decodes and the forward take turns on a CPU (serve/cpu_turns.py)
    precision_tolerance_points: float
    metrics: bool
    prometheus: bool  # GET /metrics (serve/prometheus.py)
    metrics_interval_s: int
    metrics_namespace: str
    endpoint_name: str
    variant_name: str
    drift_window: int  # images the drift scores look back on
    batch: bool  # a batch transform job's container
    body_memory_bytes: int
    max_lines_per_request: int
    compile_cache_dir: str
    compile_processes: int  # compile helpers at once
    compile_retry_s: int  # first back-off after a failed compile
    log_level: str  # gunicorn's (serve/gunicorn_conf.py)
    # Of the host, not of a variable:
    threads_per_worker: int  # torch intra-op threads in each worker (CPU); its decodes at once
    gpus: int

    @property
    def threads(self) -> int:
        """gunicorn threads per worker: every request the queue admits, and spares."""
        return self.max_queue + SPARE_THREADS

    @classmethod
    def from_env(cls, environ: dict | None = None, gpus: int | None = None) -> "Settings":
        """Read the settings: each row of serve/settings_table.py's ``ROWS`` fills its field
        (``gpus``: the GPU count to assume instead of asking NVML).

        Raises:
            ValueError: a variable its row's parser refuses (not an integer where one is
                needed, out of its range, such as a max batch size over the programs'
                ``MAX_BATCH``, or not one of its choices); the message names the variable, its
                value and what is accepted.
        """
        reading = Reading(os.environ if environ is None else environ,
                          gpu_count() if gpus is None else gpus, _cpu_count())
        fields = {row.field: row.store(reading[row.variable]) for row in ROWS}
        return cls(**fields, threads_per_worker=max(1, reading.cpus // fields["workers"]),
                   gpus=reading.gpus)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m serve.config --markdown")
    print(markdown_table())
