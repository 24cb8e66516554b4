"""Step and system metrics recorded inside the training loop, for the profiler rules and report.

What SageMaker's profiler agent recorded on the host (step duration, data-loader wait, CPU and GPU
utilisation, GPU memory) we record in-process, because the managed Debugger/Profiler service closed
to new customers on 2026-07-30 (docs/platform.md). Cost per step: two ``time.perf_counter`` calls and a list
append; a daemon thread samples utilisation every ``sample_interval_s`` (psutil, and NVML through
nvidia-ml-py when a GPU is present). A torch.profiler trace (Chrome trace format) covers the last
few training steps.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import psutil


@dataclass
class StepRecord:
    """One training step: ``step`` (global, 0-based), ``epoch``, ``wait_ms`` (time blocked on the
    DataLoader), ``step_ms`` (whole iteration: wait plus compute), ``batch_size`` (images)."""

    step: int
    epoch: int
    wait_ms: float
    step_ms: float
    batch_size: int
    first_of_epoch: bool


@dataclass
class SystemSample:
    """One utilisation sample: ``t_s`` seconds since the monitor started, ``cpu_percent``
    (0-100, all cores), ``rss_bytes`` of this process, and per-GPU utilisation (0-100) and used
    memory (bytes) when NVML sees GPUs (empty lists otherwise)."""

    t_s: float
    cpu_percent: float
    rss_bytes: int
    gpu_percent: list[float] = field(default_factory=list)
    gpu_memory_bytes: list[int] = field(default_factory=list)
    gpu_memory_total_bytes: list[int] = field(default_factory=list)


class _Nvml:
    """NVML (nvidia-ml-py) when a driver is present; ``available`` is False otherwise."""

    def __init__(self) -> None:
        self.handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # no driver, no library, no GPU: all mean "no GPU metrics"
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read(self) -> tuple[list[float], list[int], list[int]]:
        util, used, total = [], [], []
        for h in self.handles:
            util.append(float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu))
            mem = self._nvml.nvmlDeviceGetMemoryInfo(h)
            used.append(int(mem.used))
            total.append(int(mem.total))
        return util, used, total


class SystemSampler:
    """Samples CPU, memory and (when present) GPU utilisation on a daemon thread.

    Args:
        interval_s: seconds between samples (default 0.5; psutil's cpu_percent is the average over
            the interval, so shorter intervals are noisier, not costlier).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[SystemSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = _Nvml()
        self._process = psutil.Process()
        self._t0 = time.perf_counter()

    @property
    def has_gpu(self) -> bool:
        return self._nvml.available

    def start(self) -> "SystemSampler":
        psutil.cpu_percent(interval=None)  # primes the counter: the first real reading is an average
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._sample())

    def _sample(self) -> SystemSample:
        gpu, used, total = self._nvml.read() if self._nvml.available else ([], [], [])
        return SystemSample(
            t_s=time.perf_counter() - self._t0,
            cpu_percent=psutil.cpu_percent(interval=None),
            rss_bytes=self._process.memory_info().rss,
            gpu_percent=gpu,
            gpu_memory_bytes=used,
            gpu_memory_total_bytes=total,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class StepMonitor:
    """Times every training step and the DataLoader wait inside it.

    Use::

        monitor = StepMonitor()
        for epoch in ...:
            for images, labels in monitor.iterate(train_loader, epoch):
                ...forward, backward, step...
                monitor.step_end(batch_size=images.shape[0])

    ``iterate`` measures how long ``next()`` on the loader blocks (``wait_ms``); ``step_end`` closes
    the step (``step_ms`` = from asking for the batch to the end of the optimiser step). On CUDA
    the step time is only honest when the step synchronises (``loss.item()`` does).
    """

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self._step_start = 0.0
        self._wait_ms = 0.0
        self._epoch = 0
        self._first = True
        self._open = False

    def iterate(self, loader: Iterable, epoch: int) -> Iterator:
        """Yield the batches of ``loader``, timing the wait for each one."""
        self._epoch = epoch
        self._first = True
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._step_start = start
            self._wait_ms = (time.perf_counter() - start) * 1000.0
            self._open = True
            yield batch

    def step_end(self, batch_size: int) -> StepRecord | None:
        """Close the step opened by the last batch; returns its record (None if no step is open)."""
        if not self._open:
            return None
        record = StepRecord(
            step=len(self.steps),
            epoch=self._epoch,
            wait_ms=self._wait_ms,
            step_ms=(time.perf_counter() - self._step_start) * 1000.0,
            batch_size=int(batch_size),
            first_of_epoch=self._first,
        )
        self.steps.append(record)
        self._first = False
        self._open = False
        return record


# What libkineto (torch.profiler's engine) prints to stderr on every trace and is no news to the
# user: its USDT probe lines (profiler_start, profiler_stop), its STAGE lines, and, on a host
# with no GPU, an ERROR that it could not count GPUs. Its log level cannot drop the USDT lines
# and keep real errors (USDT is the highest level), so the profiler's calls are captured at the
# file-descriptor level and everything else is written back.
KINETO_NOISE = re.compile(r"^(USDT|STAGE):|gpuGetDeviceCount failed")


@contextlib.contextmanager
def quiet_kineto():
    """Hold back what C++ code writes to stderr (fd 2) inside the block, then write it back
    without ``KINETO_NOISE`` lines. Use it around the profiler's start, stop and export only:
    those calls take milliseconds, and other threads' stderr in that time is written back
    afterwards, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(True)
                    if not KINETO_NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class TraceWindow:
    """A torch.profiler trace (Chrome trace format) of ``active`` consecutive training steps from
    step ``start`` (0-based, counted by ``step_begin()`` calls), written to ``path`` (open it in
    chrome://tracing or ui.perfetto.dev).

    Call ``step_begin()`` at the start of every training step; it starts and stops the profiler
    itself, and marks each profiled step ``ProfilerStep#N`` (N: the training step, 0-based; the
    name torch.profiler gives steps under a schedule, which TensorBoard and HTA group by). Steps
    outside the window cost one integer comparison. Call ``close()`` at the end of each epoch, so
    that a window never runs on into a validation pass (it is written cut short).

    Place the window at the job's last steps (train.loop sets ``start``): they are past every
    warm-up, and only the final evaluation runs after them. Steps after a profiled window run
    slower (benchmarks/bench_trace.py measures it; benchmarks/README.md has the numbers), and on
    CUDA kineto releases that left CUPTI attached slowed training after the profiler stopped
    (pytorch/pytorch#144455): near the start of a job that would tax every later step. The
    price: a job that stops early (early stopping, a failure) has no trace.
    """

    def __init__(self, path: Path, start: int = 2, active: int = 3, cuda: bool = False) -> None:
        self.path = Path(path)
        self.start, self.active, self.cuda = start, active, cuda
        self._begun = 0  # training steps begun
        self._prof = None
        self._mark = None
        self.written = False

    def step_begin(self) -> None:
        """A training step begins: open, mark or close the window."""
        n = self._begun
        self._begun += 1
        if self._prof is None:
            if n != self.start or self.written:
                return
            import torch.profiler as tp

            activities = [tp.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(tp.ProfilerActivity.CUDA)
            self._prof = tp.profile(activities=activities, record_shapes=False)
            with quiet_kineto():
                self._prof.__enter__()
        elif n == self.start + self.active:
            self.close()
            return
        self._end_mark()
        from torch.profiler import record_function

        self._mark = record_function(f"ProfilerStep#{n}")
        self._mark.__enter__()

    def _end_mark(self) -> None:
        if self._mark is not None:
            self._mark.__exit__(None, None, None)
            self._mark = None

    def close(self) -> None:
        """Stop the profiler if it runs and write the trace."""
        if self._prof is None:
            return
        self._end_mark()
        prof, self._prof = self._prof, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_kineto():
            prof.__exit__(None, None, None)
            prof.export_chrome_trace(str(self.path))
        self.written = True
