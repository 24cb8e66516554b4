"""The precisions a model may be served in: one table that the training job measures and the
server chooses from.

A precision either runs the artifact's fp32 program under ``torch.autocast`` (``autocast``: the
torch dtype's name) or runs a program of its own that the training job writes beside it
(``program``: its file in the model dir, named with its sha256 in the manifest's
``precisions.<name>`` record). ``devices`` are the device types the training job measures it on;
a precision with its own program runs only there. ``compiled_only``: slower than fp32 unless
compiled, so a server never runs it eagerly.

Adding a precision (docs/architecture.md): a row here; on the serve side, the hardware that runs
it fast (serve/precision.py, ``Host.fast_precisions``); for a precision with its own program,
also the pass that writes that program (train/export/exporter.py, as train/export/quantize.py
writes int8's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from contract.artifact import INT8_PROGRAM, plain_file_name


def import_x86_quantizer():
    """torchao's X86InductorQuantizer module. Importing it registers the int8 ops that an int8
    program calls (``quantized_decomposed``) and inductor's int8 lowering passes for x86 (a
    process-wide side effect that the training job's quantization, its int8 evaluation and an
    int8 worker all need).

    torchao registers an Enum with torch's pytree at import, and torch logs a deprecation
    warning for it: a line users would chase in a healthy job's or worker's log.
    """
    pytree_logger = logging.getLogger("torch.utils._pytree")
    level = pytree_logger.level
    pytree_logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    finally:
        pytree_logger.setLevel(level)
    return x86_inductor_quantizer


@dataclass(frozen=True)
class Precision:
    """One serving precision (see the module's docstring for the fields)."""

    name: str
    autocast: str | None = None
    program: str | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    compiled_only: bool = False
    prepare: Callable[[], object] | None = None  # run before its program is loaded

    def autocast_dtype(self):
        """The ``torch.dtype`` to autocast to, or None (fp32, or a program of its own)."""
        if self.autocast is None:
            return None
        import torch

        return getattr(torch, self.autocast)


PRECISIONS = (
    Precision("fp32"),
    Precision("bf16", autocast="bfloat16"),
    Precision("fp16", autocast="float16", devices=("cuda",)),  # a CPU has no fast fp16
    # torchao's PT2E static quantization for x86 CPUs (train/export/quantize.py).
    Precision("int8", program=INT8_PROGRAM, devices=("cpu",), compiled_only=True,
              prepare=import_x86_quantizer),
)
NAMES = tuple(p.name for p in PRECISIONS)
_BY_NAME = {p.name: p for p in PRECISIONS}


def get(name: str) -> Precision:
    """The precision called ``name``.

    Raises:
        ValueError: not one of ``NAMES``.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}: expected one of {', '.join(NAMES)}"
                         ) from None


def autocast_dtype(name: str):
    """The ``torch.dtype`` precision ``name`` autocasts to, or None."""
    return get(name).autocast_dtype()


def measured_on(device_type: str) -> list[Precision]:
    """The precisions a training job on ``device_type`` ("cpu" or "cuda") measures on the fp32
    program, fp32 first; those with a program of their own are measured where it runs, when the
    job wrote it."""
    return [p for p in PRECISIONS if p.program is None and device_type in p.devices]


def with_programs() -> list[Precision]:
    """The precisions that run a program of their own."""
    return [p for p in PRECISIONS if p.program is not None]


def program_of(record: dict | None, name: str) -> str | None:
    """The file name of precision ``name``'s program in the model dir, as the manifest's
    ``precisions`` ``record`` names it (``record[name]["program"]``), or None when the record
    has none or the name is not a plain file name."""
    entry = (record or {}).get(name)
    program = entry.get("program") if isinstance(entry, dict) else None
    return program if plain_file_name(program) else None
