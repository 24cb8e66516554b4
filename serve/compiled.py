"""The compile store: compiled programs made once per host and artifact, and loaded by every
worker.

The compiled form is AOTInductor's package (torch.export, then inductor, then a shared library
with the weights frozen into it), one per batch size, kept unpacked in ``SERVE_COMPILE_CACHE_DIR``
(serve/config.py: a private folder, ``open_store``, that all of a container's workers see and
that outlives a worker). A package is keyed by the program's sha256, the precision, the versions
of torch and torchao, and the device: the CPU's flags (``/proc/cpuinfo``) or the GPU's name and
compute capability, so a program compiled for another CPU is never loaded. A key's folder
(``Entry``) holds a package per size (``b<size>``, made atomically: complete or absent) and what
the processes of a host share through it, all with ``fcntl.flock`` locks, which the kernel
releases when their holder dies:
- ``b<size>.lock``: the compile helper building that size (serve/compile_helper.py);
- ``helpers.lock``: held by the helpers a worker started, so that no other worker starts more;
- ``in-use.lock``, shared: held by every live worker and helper of the key, so that eviction
  (``evict_unused``) never removes a package a live process uses;
- ``failed``: the last failed compile, its reason and how many failed in a row (the workers'
  back-off, ``Failure.retry_at``); ``wanted.json``: the order the workers' batches need the
  sizes in; ``costs-<threads>-threads.json``: the sizes' measured forward times.
A model may carry packages built for a kind of host (``SHIPPED``: ``compiled/<key>/``, written by
``Entry.ship`` in the compile step, serve/precompile.py); a worker copies them into the store
(``Entry.import_shipped``) and compiles nothing.

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
import stat
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger("serve")

FORMAT = 1  # what a package holds and how it is compiled: a new value orphans the old ones
EVICT_AFTER_S = 86_400  # another artifact's packages that no worker loaded for a day go
RETRY_S = 60.0  # a failed compile is tried again after 1, 2, 4... minutes
RETRY_MAX_S = 3600.0
SHIPPED = "compiled"  # the model dir's folder of packages built before deployment
FAILED = "failed"  # files in an entry's folder
USED = "used"
IN_USE = "in-use.lock"
HELPERS = "helpers.lock"
WANTED = "wanted.json"


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


def exporter(program_path: Path, precision: str, crop: int, device: torch.device
             ) -> Callable[[int], torch.export.ExportedProgram]:
    """``make(size)`` for ``compile_sizes``: the program in ``program_path`` (checked by the
    caller) on ``device``, exported for a batch of ``size`` in ``precision`` (its own program,
    or under autocast), with what the precision needs imported first (int8: torchao's ops).

    Raises:
        Exception: what torch raises for a program it cannot load.
    """
    from contract import precisions

    row = precisions.get(precision)
    if row.prepare is not None:
        row.prepare()
    module = torch.export.load(str(program_path)).module().to(device).to(
        memory_format=torch.channels_last)
    return lambda size: export(module, size, crop, device, row.autocast_dtype())


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


class _Lock:
    """An flock on ``path`` taken without waiting (``held``); closing the file releases it, and
    so does the kernel when the holder dies."""

    def __init__(self, path: Path, shared: bool = False):
        self.file = open(path, "a")
        try:
            fcntl.flock(self.file, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False

    def __enter__(self) -> "_Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()


def open_store(path: Path) -> Path:
    """The compile store at ``path``, made private (mode 0700) when it is not there yet.

    The store holds shared libraries that every worker loads and runs, so it must be this
    user's alone: a folder another user made first (any user can create a fixed path under
    /tmp) could hold planted code.

    Raises:
        CompileUnavailable: ``path`` is a symbolic link, not a folder, owned by another user, or
            open to others (group or world permissions), or cannot be made.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise CompileUnavailable(f"cannot make the compile store {path}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise CompileUnavailable(f"refusing the compile store {path}: not a folder of its own "
                                 "(a symbolic link or a file)")
    if st.st_uid != os.geteuid():
        raise CompileUnavailable(f"refusing the compile store {path}: owned by uid {st.st_uid}, "
                                 f"not this user ({os.geteuid()}); set SERVE_COMPILE_CACHE_DIR "
                                 "to a folder of your own")
    if st.st_mode & 0o077:
        raise CompileUnavailable(f"refusing the compile store {path}: mode "
                                 f"{stat.S_IMODE(st.st_mode):04o} lets other users write or read "
                                 f"it; chmod 700 {path}")
    return path


@dataclass(frozen=True)
class Failure:
    """The last failed compile of an entry: why (one line), when (time.time()) and how many
    failed in a row."""

    reason: str
    at: float
    attempts: int

    def retry_at(self, retry_s: float = RETRY_S) -> float:
        """When to try again: ``retry_s`` after the first failure, doubling with each one after
        it, RETRY_MAX_S at most (an exponential back-off)."""
        return self.at + min(RETRY_MAX_S, retry_s * 2 ** (self.attempts - 1))


class Entry:
    """One key's folder in the store: a package per batch size (``b<size>``), with the locks
    and notes the workers and compile helpers share (see the module's docstring)."""

    def __init__(self, store: Path, entry_key: str):
        self.store, self.key, self.path = store, entry_key, store / entry_key
        self.path.mkdir(mode=0o700, exist_ok=True)

    def package(self, size: int) -> Path:
        return self.path / f"b{size}"

    def ready(self, sizes: list[int]) -> list[int]:
        """The sizes among ``sizes`` whose package is complete here."""
        return [size for size in sizes if self.package(size).is_dir()]

    def hold(self) -> _Lock:
        """A shared lock that says a live process uses this entry (eviction skips it); keep
        the returned lock open for as long as the entry is used."""
        (self.path / USED).touch()
        return _Lock(self.path / IN_USE, shared=True)

    def import_shipped(self, shipped: Path, sizes: list[int]) -> list[int]:
        """Copy the packages of ``sizes`` that the model carries (``shipped``: its
        ``compiled/<key>`` folder) and the store lacks; returns the sizes copied. Each copy is
        atomic (complete or absent)."""
        copied = []
        for size in sizes:
            source = shipped / f"b{size}"
            if not source.is_dir() or self.package(size).is_dir():
                continue
            work = Path(tempfile.mkdtemp(prefix=f".b{size}-", dir=self.path))
            try:
                shutil.copytree(source, work / "package")
                os.replace(work / "package", self.package(size))
                copied.append(size)
            except OSError as exc:
                logger.warning("the model's compiled program for batch size %d was not copied "
                               "(%s); it is compiled here instead", size, exc)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return copied

    def ship(self, model_dir: Path, sizes: list[int], about: dict) -> Path:
        """Copy the packages of ``sizes`` into ``model_dir``'s ``compiled/<key>`` folder, where
        a server on a host of this key finds them (``import_shipped``), with ``about.json``
        (``about``: what they were built for, for a person). Returns that folder.

        Raises:
            CompileUnavailable: a size has no package here.
            OSError: the copy fails.
        """
        missing = [size for size in sizes if not self.package(size).is_dir()]
        if missing:
            raise CompileUnavailable(f"no package for batch sizes {missing} in {self.path}")
        target = model_dir / SHIPPED / self.key
        target.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            shutil.rmtree(target / f"b{size}", ignore_errors=True)
            shutil.copytree(self.package(size), target / f"b{size}")
        (target / "about.json").write_text(json.dumps(about, indent=1, sort_keys=True))
        return target

    def remove(self, size: int) -> None:
        """Remove a package that does not load, so that it is compiled again."""
        shutil.rmtree(self.package(size), ignore_errors=True)

    def failure(self) -> Failure | None:
        """The last failed compile noted here, or None (an unreadable note counts as one
        failure now)."""
        try:
            note = json.loads((self.path / FAILED).read_text())
            return Failure(str(note["reason"]), float(note["at"]), int(note["attempts"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return Failure("an unreadable failure note", time.time(), 1)

    def note_failure(self, reason: str) -> Failure:
        """Record a failed compile (one more in a row) for every worker of this entry."""
        last = self.failure()
        failure = Failure(reason, time.time(), (last.attempts if last else 0) + 1)
        _write_atomic(self.path / FAILED, json.dumps(failure.__dict__))
        return failure

    def clear_failure(self) -> None:
        (self.path / FAILED).unlink(missing_ok=True)

    def helpers_running(self) -> bool:
        """Whether a compile helper holds this entry (it holds HELPERS shared until it exits)."""
        with _Lock(self.path / HELPERS) as probe:
            return not probe.held

    def helpers_lock(self) -> _Lock | None:
        """HELPERS, exclusively, when no helper holds it: the caller starts helpers, handing
        each the lock's file (``pass_fds``) and converting it to shared, then closes its own
        copy. None when helpers are running."""
        lock = _Lock(self.path / HELPERS)
        if lock.held:
            return lock
        lock.close()
        return None

    def want(self, order: list[int]) -> None:
        """The order in which the workers' batches need the sizes, for the helpers' next pick."""
        _write_atomic(self.path / WANTED, json.dumps(order))

    def wanted(self, sizes: list[int]) -> list[int]:
        """``sizes`` in the order the workers asked for (``want``), else ``default_order``."""
        try:
            asked = [int(s) for s in json.loads((self.path / WANTED).read_text())]
        except (OSError, ValueError, TypeError):
            asked = []
        return [s for s in asked if s in sizes] + [s for s in default_order(sizes)
                                                   if s not in asked]


def default_order(sizes: list[int]) -> list[int]:
    """The order sizes are compiled in before any batch asked: batch 1 (a lone request), then
    the largest down (the batches a loaded worker forms)."""
    ordered = sorted(sizes, reverse=True)
    return ([1] if 1 in sizes else []) + [s for s in ordered if s != 1]


def compile_sizes(entry: Entry, sizes: list[int],
                  make: Callable[[int], torch.export.ExportedProgram]) -> list[int]:
    """Compile the packages of ``sizes`` that are missing from ``entry``, one at a time, in
    the order the workers want them (``Entry.wanted``, read again before each pick), skipping
    a size another helper holds the lock of. Returns the sizes compiled here.

    Raises:
        CompileUnavailable: a compile failed (the reason, also in the entry's failure note).
    """
    done: list[int] = []
    skipped: set[int] = set()
    while True:
        todo = [s for s in entry.wanted(sizes) if s not in skipped
                and not entry.package(s).is_dir()]
        if not todo:
            return done
        size = todo[0]
        with _Lock(entry.path / f"b{size}.lock") as lock:
            if not lock.held:
                skipped.add(size)  # another helper is compiling it
                continue
            if entry.package(size).is_dir():
                continue
            start = time.perf_counter()
            try:
                produce(make(size), entry.package(size))
            except Exception as exc:  # noqa: BLE001 - inductor and its C++ toolchain fail many ways
                failure = entry.note_failure(f"batch size {size}: {_one_line(exc)}")
                raise CompileUnavailable(failure.reason) from exc
            logger.info("compiled batch size %d in %.1f s into %s", size,
                        time.perf_counter() - start, entry.path)
            done.append(size)


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
    _write_atomic(store / entry_key / f"costs-{threads}-threads.json",
                  json.dumps({str(size): ms for size, ms in costs.items()}))


def evict_unused(store: Path, keep: str) -> None:
    """Remove other keys' packages that no process loaded for EVICT_AFTER_S (a long-lived host
    serving one artifact after another would fill its disk), never one a live worker or helper
    holds (``Entry.hold``)."""
    cutoff = time.time() - EVICT_AFTER_S
    for entry in store.iterdir():
        if entry.name == keep or not entry.is_dir():
            continue
        stamp = entry / USED
        last = stamp.stat().st_mtime if stamp.exists() else entry.stat().st_mtime
        if last >= cutoff:
            continue
        with _Lock(entry / IN_USE) as lock:
            if lock.held:
                shutil.rmtree(entry, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
