"""Writing the self-describing model artifact in /opt/ml/model (SageMaker tars it into
model.tar.gz); its format, file names and manifest checks are the contract's
(contract/artifact.py), which serve reads with and never imports train/.

- ``model.pt2``: a ``torch.export`` program of the eval-mode network, batch dynamic from 1 to
  ``MAX_BATCH``; ``model-int8.pt2`` (optional): the same network quantized to int8 for CPU
  serving (train/export/quantize.py), named in ``precisions.int8.program``.
- ``manifest.json``: architecture, class names in index order, preprocessing (resize, crop, mean,
  std), versions, metrics, hyperparameters, ``program_sha256`` (of ``model.pt2``), and
  ``training``: whether training completed, or where a stop (SIGTERM: StopTrainingJob, a spot
  interruption, MaxRuntimeInSeconds) cut it short and which weights the program holds
  (``complete`` false: a partial model). Then what the optional passes after the export add
  (train/export/post_training.py): ``precisions``: the program's top-1 and top-5 accuracy on the
  test (else valid) channel in fp32 and in each reduced precision serve may run it in
  (train/export/precision.py), which serve's choice is gated by; ``baseline``: the distributions
  the endpoint's drift scores compare against (train/export/baseline.py); and ``post_training``:
  each pass's outcome, ``{"int8_calibration"|"precisions"|"baseline": {"status": ..., "reason":
  ...}}`` with status ``pending`` (not run yet, or the job ended before it), ``done``,
  ``skipped`` (a stop came first: ``reason`` says which signal), ``failed`` (``reason``: the
  error) or ``off`` (not asked for); a done int8 calibration also names its ``program`` and
  ``program_sha256``.

Order of writes: the program goes to a temporary file first; only when it is complete is an
older manifest removed (it must never describe the new program) and the program renamed into
place, and the manifest follows at once: from then on the folder holds a complete, servable
fp32 artifact. Each pass then adds its sections with an atomic rewrite of the manifest (the
int8 program is in place before the manifest names it). A manifest marks a complete artifact,
so a job that fails during the export never leaves something serve would load, and one that
stops or fails during the passes keeps its model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from contract.artifact import FORMAT, FORMAT_VERSION, INT8_PROGRAM, MANIFEST, MAX_BATCH, PROGRAM
from train.checkpoint import atomic_write, failure_cause
from train.data import Preprocess, readable_label
from train.errors import TrainingError

logger = logging.getLogger(__name__)


def export(model: nn.Module, crop: int) -> torch.export.ExportedProgram:
    """Export ``model`` (on the CPU, eval mode) with a dynamic batch dimension."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})


def save_program(program: torch.export.ExportedProgram, path: Path, what: str,
                 before_replace: Callable[[], None] | None = None) -> str:
    """``torch.export.save`` ``program`` to ``path`` atomically (train.checkpoint.atomic_write);
    ``before_replace()`` runs once the new file is complete, just before it takes the place of
    ``path``. Returns the file's SHA-256 (hex).

    Raises:
        TrainingError: it cannot be serialised or written (disk full, permissions), naming the
            cause; no temporary file is left.
    """
    # Serialised in memory first (the program's size, ~100 MB for resnet50): torch.export.save
    # writing to a file on a full disk raises, and then torch 2.15's archive writer throws again
    # in its destructor, which aborts the whole process (std::terminate), failure file unwritten.
    buffer = io.BytesIO()
    try:
        torch.export.save(program, buffer)
    except Exception as exc:
        logger.exception("cannot serialise %s", what)
        raise TrainingError(f"cannot save {what}: {failure_cause(exc)}") from exc
    digest = hashlib.sha256(buffer.getbuffer()).hexdigest()
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()), what,
                 None if before_replace is None else lambda tmp: before_replace())
    return digest


def write(model_dir: Path, model: nn.Module, arch: str, class_folders: list[str],
          pre: Preprocess, job_name: str, metrics: dict, hyperparameters: dict,
          training: dict | None = None, sections: dict | None = None) -> Path:
    """Write a complete fp32 artifact, ``model.pt2`` then ``manifest.json``, to ``model_dir``;
    returns the manifest path. An older artifact there stays whole until the new program is
    complete on disk; then its manifest and int8 program are removed and the new program takes
    its place.

    ``model`` must be a plain module (no DDP wrapper, no debugger hooks): export a fresh copy.
    ``training``: the manifest's ``training`` section (``{"complete": True}`` when omitted).
    ``sections``: more manifest sections, ``{name: section}`` (``post_training``; empty ones are
    left out); ``update`` adds the rest later.

    Raises:
        TrainingError: the program cannot be exported or written (disk full, permissions),
            naming the cause; no temporary file is left.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        program = export(model, pre.crop)
    except Exception as exc:
        logger.exception("cannot export the model")
        raise TrainingError(f"cannot export the model: {failure_cause(exc)}") from exc

    def retire_older_artifact() -> None:
        # An older manifest must never describe the new program; and an older job's int8 program
        # must not ride along in model.tar.gz when this job writes none (a stop,
        # int8-calibration-images=0 or a failed quantization).
        (model_dir / MANIFEST).unlink(missing_ok=True)
        (model_dir / INT8_PROGRAM).unlink(missing_ok=True)

    digest = save_program(program, model_dir / PROGRAM, "the model program",
                          before_replace=retire_older_artifact)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program": PROGRAM,
        "program_sha256": digest,
        "arch": arch,
        "num_classes": len(class_folders),
        "classes": [readable_label(c) for c in class_folders],
        "class_folders": list(class_folders),
        "preprocess": {
            "resize": pre.resize,
            "crop": pre.crop,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": "bilinear",
            "color": "RGB",
        },
        "input": {"dtype": "float32", "layout": "NCHW", "max_batch": MAX_BATCH},
        "output": "logits",
        "model_version": f"{job_name}-{digest[:12]}",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metrics": metrics,
        "hyperparameters": hyperparameters,
        "training": training or {"complete": True},
    }
    return _write_manifest(model_dir, manifest, sections or {})


def update(model_dir: Path, sections: dict) -> Path:
    """Add (or replace) ``sections``, ``{name: section}``, in ``model_dir``'s manifest with an
    atomic rewrite (empty sections are left out); returns its path.

    Raises:
        TrainingError: the manifest cannot be read or written; the previous one stays.
    """
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read the manifest {path}: {failure_cause(exc)}") from exc
    return _write_manifest(Path(model_dir), manifest, sections)


def _write_manifest(model_dir: Path, manifest: dict, sections: dict) -> Path:
    manifest.update({name: value for name, value in sections.items() if value})
    path = model_dir / MANIFEST
    atomic_write(path, lambda p: p.write_text(json.dumps(manifest, indent=2)), "the manifest")
    return path
