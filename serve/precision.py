"""Which precision and execution mode a worker runs its model in, chosen per host.

The fastest precision the host has hardware for, among those whose top-1 accuracy the training
job recorded (manifest ``precisions``, train/export/precision.py) within ``tolerance`` points of
fp32's:

- a CPU with int8 dot-product instructions (AMX-INT8, AVX512-VNNI or AVX-VNNI) and a C++
  compiler: int8, where the artifact holds an int8 program (train/export/quantize.py), compiled (the
  uncompiled int8 program is slower than fp32);
- a CPU with AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo`` flags): bf16 (a CPU without them
  emulates bf16, slower than fp32);
- a GPU: fp16 (every CUDA GPU has fast fp16), then bf16 (compute capability 8.0 and later),
  else fp32.

``SERVE_PRECISION`` forces one (``fp32``, ``bf16``, ``fp16``, ``int8``; ``auto`` by default) and
``SERVE_COMPILE`` the mode (``auto``, ``on``, ``off``): ``auto`` compiles with AOTInductor
(weights frozen, once per host: serve/compiled.py) where it can, which on a CPU needs a C++
compiler on the first start.
A model whose reduced precision disagrees too much with fp32, or whose record is missing or
corrupt, is served in fp32, and the choice is logged with its reason. The precisions, their
autocast dtypes and programs are the contract's table (contract/precisions.py); which hardware
runs each fast is this module's (``Host.fast_precisions``).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from contract import precisions

DEFAULT_TOLERANCE_POINTS = 0.5
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class Host:
    """What the worker's device can do fast: ``device`` "cpu" or "cuda", the CPU's flags, the
    GPU's compute capability, whether a C++ compiler is on PATH."""

    device: str
    cpu_flags: frozenset = field(default_factory=frozenset)
    cuda_capability: tuple[int, int] | None = None
    compiler: bool = False

    @classmethod
    def detect(cls, device_type: str, gpu_index: int = 0) -> "Host":
        """This host as seen from a worker on ``device_type`` ("cpu" or "cuda")."""
        flags: frozenset = frozenset()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = frozenset(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
        capability = None
        if device_type == "cuda":
            import torch

            capability = tuple(torch.cuda.get_device_capability(gpu_index))
        compiler = any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))
        return cls(device_type, flags, capability, compiler)

    def fast_precisions(self) -> list[str]:
        """Reduced precisions this host runs faster than fp32, fastest first (on a CPU, int8
        before bf16: faster where both run, benchmarks/README.md)."""
        if self.device == "cuda":
            return ["fp16"] + (["bf16"] if (self.cuda_capability or (0, 0)) >= (8, 0) else [])
        fast = []
        if self.compiler and any(f in self.cpu_flags for f in CPU_INT8_FLAGS):
            fast.append("int8")
        if any(f in self.cpu_flags for f in CPU_BF16_FLAGS):
            fast.append("bf16")
        return fast


def prepare_cpu_precisions() -> None:
    """Run, in gunicorn's master before it forks, what the reduced precisions this CPU host
    could choose need before their programs load (int8: torchao's import, seconds): every
    worker, a respawned one too, then starts without it. Touches no GPU (forking after CUDA
    initialised breaks the workers' CUDA)."""
    for name in Host.detect("cpu").fast_precisions():
        prepare = precisions.get(name).prepare
        if prepare is not None:
            prepare()


@dataclass(frozen=True)
class Choice:
    """The precision and mode a worker runs, and why (a sentence for the log)."""

    precision: str
    compile: bool
    reason: str


def _accuracy(record: dict | None, precision: str) -> float | None:
    """The recorded top-1 of ``precision`` (0-1), or None when missing or not a valid number."""
    entry = (record or {}).get(precision)
    value = entry.get("top1") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def present(record: dict | None, model_dir) -> dict | None:
    """``record`` without the entry of a precision whose own program (int8's) it names is not a
    file in ``model_dir`` (an artifact copied without it): that model is then served in another
    precision instead of failing to load."""
    missing = {p.name for p in precisions.with_programs()
               if (name := precisions.program_of(record, p.name)) is not None
               and not (Path(model_dir) / name).is_file()}
    if not missing:
        return record
    return {key: value for key, value in record.items() if key not in missing}


def choose(record: dict | None, host: Host, precision: str = "auto", compile_mode: str = "auto",
           tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> Choice:
    """The precision and mode for a model with the manifest's ``precisions`` ``record``.

    Raises:
        ValueError: an unknown ``precision`` or ``compile_mode``.
    """
    if precision not in ("auto",) + precisions.NAMES:
        raise ValueError(f"SERVE_PRECISION={precision!r}: expected auto, "
                         f"{', '.join(precisions.NAMES)}")
    if compile_mode not in ("auto", "on", "off"):
        raise ValueError(f"SERVE_COMPILE={compile_mode!r}: expected auto, on or off")
    compiled = compile_mode == "on" or (compile_mode == "auto" and
                                        (host.device == "cuda" or host.compiler))
    mode = "compiled" if compiled else "eager"
    rejected = []
    if precision != "auto":
        if compiled or not precisions.get(precision).compiled_only:
            return Choice(precision, compiled, f"{precision}, {mode}: forced by SERVE_PRECISION")
        # Never served uncompiled (slower than fp32): the best uncompiled precision instead.
        rejected.append(f"SERVE_PRECISION={precision} runs fast only compiled")
    fast = host.fast_precisions()
    if not fast:
        return Choice("fp32", compiled, f"fp32, {mode}: this {host.device} has no faster "
                                        f"precision" + "".join(f"; {r}" for r in rejected))
    reference = _accuracy(record, "fp32")
    if reference is None:
        return Choice("fp32", compiled, f"fp32, {mode}: the model records no valid fp32 "
                                        f"accuracy to check a reduced precision against"
                      + "".join(f"; {r}" for r in rejected))
    for candidate in fast:
        table = precisions.get(candidate)
        if table.compiled_only and not compiled:
            rejected.append(f"{candidate} runs fast only compiled (SERVE_COMPILE=off)")
            continue
        if table.program is not None and precisions.program_of(record, candidate) is None:
            rejected.append(f"{candidate} not recorded (the artifact has no {candidate} program)")
            continue
        accuracy = _accuracy(record, candidate)
        if accuracy is None:
            rejected.append(f"{candidate} not recorded")
            continue
        loss = (reference - accuracy) * 100
        if loss <= tolerance_points:
            return Choice(candidate, compiled,
                          f"{candidate}, {mode}: the host runs it fast, and its recorded top-1 "
                          f"{accuracy:.4f} is within {tolerance_points:g} points of fp32's "
                          f"{reference:.4f} (on {record.get('evaluated_on', '?')})"
                          + "".join(f"; passed over: {r}" for r in rejected))
        rejected.append(f"{candidate} top-1 {accuracy:.4f} is {loss:.2f} points below fp32's "
                        f"{reference:.4f}, over the {tolerance_points:g}-point tolerance")
    return Choice("fp32", compiled, f"fp32, {mode}: " + "; ".join(rejected))
