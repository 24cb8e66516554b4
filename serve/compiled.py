"""Compiled programs made once per host and artifact, and loaded by every other worker.

The compiled form is AOTInductor's package (torch.export, then inductor, then a shared library
with the weights frozen into it), one per batch size, kept unpacked in ``SERVE_COMPILE_CACHE_DIR``
(serve/config.py: a folder all of a container's workers see, that outlives a worker). A package
is keyed by the program's sha256, the precision, the versions of torch and torchao, and the
device: the CPU's flags (``/proc/cpuinfo``) or the GPU's name and compute capability, so a
program compiled for another CPU is never loaded. The first worker to take a size's lock
(``fcntl.flock``, which the kernel releases if that worker dies) compiles it; the others compile
the sizes nobody holds, then wait for the rest and load them. The first to time the programs
keeps the times there too, so a respawned worker is ready as soon as it has loaded them. A
compile that fails leaves a ``failed`` note with its reason, and every worker of that key then
serves eagerly at once, saying why.

Why AOTInductor and not torch.compile's own caches: the weights must be frozen (inductor folds
and prepacks them for oneDNN; the int8 program's lowering to oneDNN's int8 kernels needs it),
and with freezing on, torch 2.15 bypasses both caches: AOTAutogradCache refuses any graph
("Cannot cache a graph with freezing enabled") and the FX graph cache cannot pickle the frozen
graph's prepacked constants ("mkldnn tensors unpickleable"). So a respawned worker traced,
froze and lowered every batch size again; only the C++ build hit its cache. An AOTInductor
package holds the result itself and loads in a fraction of a second, for fp32, bf16 (autocast
exported into the program) and int8 alike. Its compile and load functions are documented in
PyTorch's AOTInductor guide and live in ``torch._inductor`` only (tests/test_architecture.py
allows that one import). Loading from the unpacked folder, not the .pt2 file, matters: a .pt2 is
unpacked into a new temporary folder by every load, which a killed worker leaves behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger("serve")

FORMAT = 1  # what a package holds and how it is compiled: a new value orphans the old ones
WAIT_S = 900  # how long a worker waits for another one's compile before serving eagerly
POLL_S = 0.2
EVICT_AFTER_S = 86_400  # another artifact's packages that no worker loaded for a day go
FAILED = "failed"
USED = "used"


class CompileUnavailable(RuntimeError):
    """No compiled program can be produced or loaded here; the message (one line) says why."""


def host_id(device: torch.device, cpu_flags: frozenset) -> str:
    """What a compiled program is specific to on ``device``: a digest of the CPU's flags (their
    instruction sets pick the kernels), or the GPU's name and compute capability."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda {name} sm_{major}{minor} cuda {torch.version.cuda}"
    return "cpu " + hashlib.sha256(" ".join(sorted(cpu_flags)).encode()).hexdigest()[:16]


def key(program_sha256: str, precision: str, host: str) -> str:
    """The store's folder name for one program in one precision on one host (``host_id``):
    a digest of those, the store's FORMAT and the versions of torch and torchao."""
    try:
        from importlib.metadata import version

        torchao = version("torchao")
    except Exception:  # noqa: BLE001 - not installed: int8 is then never chosen
        torchao = None
    fields = {"format": FORMAT, "program_sha256": program_sha256, "precision": precision,
              "host": host, "torch": torch.__version__, "torchao": torchao}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class _Autocast(torch.nn.Module):
    """``module`` under ``torch.autocast`` to ``dtype``, float32 out: exported this way, the
    compiled program carries the precision itself."""

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x).float()


def export(module: torch.nn.Module, batch: int, crop: int, device: torch.device,
           autocast: torch.dtype | None) -> torch.export.ExportedProgram:
    """``module`` exported for exactly ``batch`` images of float32 [batch, 3, crop, crop] in
    channels_last memory (serve.model.normalise's output), under autocast to ``autocast`` when
    given. A static batch: the int8 program's oneDNN kernels ran 2-6x slower compiled with a
    dynamic one (benchmarks/README.md)."""
    example = torch.zeros(batch, 3, crop, crop, device=device).contiguous(
        memory_format=torch.channels_last)
    net = module if autocast is None else _Autocast(module, device.type, autocast)
    with torch.no_grad():
        return torch.export.export(net, (example,), strict=False)


def _aoti():
    """AOTInductor's compile and load functions (torch._inductor's public entry points)."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    return aoti_compile_and_package, aoti_load_package


def _quiet() -> None:
    """Silence what compiling and loading log on a healthy CPU host: torchao's int8 lowering
    warns about its own tensor copy on every convolution, and the C++ toolchain lookup logs
    "No CUDA runtime is found"; both send users hunting in a healthy worker's log."""
    warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                            category=UserWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def produce(program: torch.export.ExportedProgram, folder: Path) -> None:
    """Compile ``program`` with AOTInductor, weights frozen, into the unpacked package
    ``folder`` (made atomically: complete or absent). The caller holds ``folder``'s lock.

    Raises:
        Exception: whatever inductor or the C++ compiler raise.
    """
    compile_package, _ = _aoti()
    _quiet()
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}-*"):  # a killed worker's (its lock is ours)
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        # Inductor freezes weights only with grad mode off (compile_fx's freezing path).
        with torch.no_grad():
            compile_package(program, package_path=str(work / "program.pt2"),
                            inductor_configs={"freezing": True})
        with zipfile.ZipFile(work / "program.pt2") as archive:
            archive.extractall(work / "unpacked")
        (work / "program.pt2").unlink()
        os.replace(work / "unpacked", folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(folder: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled program in the unpacked package ``folder``, on ``device``: called with
    the input it was exported for, it returns float32 logits.

    Raises:
        Exception: what torch raises for a package it cannot load.
    """
    _, load_package = _aoti()
    _quiet()
    inner = next(p.parent for p in folder.glob("*/archive_format"))
    index = (device.index or 0) if device.type == "cuda" else -1
    return load_package(str(inner), device_index=index)


class _SizeLock:
    """An exclusive lock on one batch size's package, taken without waiting (``held``)."""

    def __init__(self, path: Path):
        self.file = open(path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False

    def __enter__(self) -> "_SizeLock":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # closing releases the lock


def obtain(store: Path, entry_key: str, sizes: list[int],
           make: Callable[[int], torch.export.ExportedProgram], device: torch.device,
           wait_s: float = WAIT_S) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """The compiled program of each batch size in ``sizes``, from ``store / entry_key``:
    loaded where it is there, else compiled from ``make(size)`` (an exported program) by
    whichever worker takes its lock first; waits up to ``wait_s`` for sizes another worker is
    compiling.

    Raises:
        CompileUnavailable: a compile failed here or in another worker (its reason), the wait
            ran out, or a package does not load.
    """
    entry = store / entry_key
    entry.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    pending = [size for size in sizes if not (entry / f"b{size}").is_dir()]
    produced = []
    while pending:
        _raise_if_failed(entry)
        for size in list(pending):
            with _SizeLock(entry / f"b{size}.lock") as lock:
                if not lock.held:
                    continue  # another worker is compiling it
                if not (entry / f"b{size}").is_dir():
                    _produce_or_note(make, size, entry)
                    produced.append(size)
                pending.remove(size)
        if pending:
            if time.monotonic() > deadline:
                raise CompileUnavailable(f"another worker has been compiling batch sizes "
                                         f"{pending} for over {wait_s:.0f} s")
            time.sleep(POLL_S)
    if produced:
        _evict_unused(store, keep=entry_key)
    programs = {}
    for size in sizes:
        try:
            programs[size] = load(entry / f"b{size}", device)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad package
            raise CompileUnavailable(f"the compiled program for batch size {size} in {entry} "
                                     f"does not load: {_one_line(exc)}") from exc
    (entry / USED).touch()
    return programs


def saved_costs(store: Path, entry_key: str, threads: int) -> dict[int, float] | None:
    """The forward times (ms per batch size) that a worker with ``threads`` intra-op threads
    measured for this entry's programs, or None when none did (or the file is unreadable)."""
    try:
        saved = json.loads((store / entry_key / f"costs-{threads}-threads.json").read_text())
        return {int(size): float(ms) for size, ms in saved.items()}
    except (OSError, ValueError, AttributeError):
        return None


def save_costs(store: Path, entry_key: str, threads: int, costs: dict[int, float]) -> None:
    """Keep the measured forward times for the workers after this one (a respawn then starts
    without timing every size again); written atomically, the last writer winning."""
    path = store / entry_key / f"costs-{threads}-threads.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({str(size): ms for size, ms in costs.items()}))
    os.replace(tmp, path)


def _produce_or_note(make, size: int, entry: Path) -> None:
    """Compile batch size ``size`` into ``entry``; on failure, leave the reason in its
    ``failed`` note for every other worker and raise CompileUnavailable."""
    start = time.perf_counter()
    try:
        produce(make(size), entry / f"b{size}")
    except Exception as exc:  # noqa: BLE001 - inductor and its C++ toolchain fail many ways
        reason = f"batch size {size}: {_one_line(exc)}"
        (entry / FAILED).write_text(reason)
        raise CompileUnavailable(reason) from exc
    logger.info("compiled batch size %d in %.1f s into %s", size, time.perf_counter() - start,
                entry)


def _raise_if_failed(entry: Path) -> None:
    try:
        reason = (entry / FAILED).read_text().strip()
    except FileNotFoundError:
        return
    raise CompileUnavailable(f"{reason}; noted in {entry / FAILED}, delete it to compile again")


def _evict_unused(store: Path, keep: str) -> None:
    """Remove other keys' packages that no worker loaded for EVICT_AFTER_S (a long-lived host
    serving one artifact after another would fill its disk)."""
    cutoff = time.time() - EVICT_AFTER_S
    for entry in store.iterdir():
        if entry.name == keep or not entry.is_dir():
            continue
        stamp = entry / USED
        last = stamp.stat().st_mtime if stamp.exists() else entry.stat().st_mtime
        if last < cutoff:
            shutil.rmtree(entry, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
