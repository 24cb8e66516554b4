"""The self-describing model artifact in /opt/ml/model (SageMaker tars it into model.tar.gz).

Files (format_version 1; serve/ reads them and never imports train/):

- ``model.pt2``: a ``torch.export`` program of the eval-mode network. Input float32 NCHW
  [B, 3, crop, crop], already normalised; B dynamic (1 to 1024). Output float32 logits
  [B, num_classes]. Loading it needs torch, not this code, and unpickles no Python objects.
- ``model-int8.pt2`` (optional): the same network quantized to int8 for CPU serving
  (train/quantize.py), named in ``precisions.int8.program``; it needs torchao's inductor passes
  to run fast, and serve only runs it compiled.
- ``manifest.json``: architecture, class names in index order, preprocessing (resize, crop, mean,
  std), versions, metrics, hyperparameters and ``training``: whether training completed, or
  where a stop (SIGTERM: StopTrainingJob, a spot interruption, MaxRuntimeInSeconds) cut it short
  and which weights the program holds (``complete`` false: a partial model), and ``precisions``:
  the program's top-1 and top-5 accuracy on the test (else valid) channel in fp32 and in each
  reduced precision serve may run it in (train/precision.py), which serve's choice is gated
  by, and ``baseline``: the distributions the endpoint's drift scores compare against
  (train/baseline.py). Written last: its presence marks a complete
  artifact, so a job that fails half way never leaves something serve would load.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from train.checkpoint import atomic_write
from train.data import Preprocess, readable_label

FORMAT = "sagemaker-dog-breeds/model"
FORMAT_VERSION = 1
PROGRAM = "model.pt2"
INT8_PROGRAM = "model-int8.pt2"  # written by train/quantize.py
MANIFEST = "manifest.json"
MAX_BATCH = 1024


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model: nn.Module, crop: int) -> torch.export.ExportedProgram:
    """Export ``model`` (on the CPU, eval mode) with a dynamic batch dimension."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})


def write(model_dir: Path, model: nn.Module, arch: str, class_folders: list[str],
          pre: Preprocess, job_name: str, metrics: dict, hyperparameters: dict,
          training: dict | None = None,
          evaluate: Callable[[Path], dict] | None = None) -> Path:
    """Write ``model.pt2`` then ``manifest.json`` to ``model_dir``; returns the manifest path.

    ``model`` must be a plain module (no DDP wrapper, no debugger hooks): export a fresh copy.
    ``training``: the manifest's ``training`` section (``{"complete": True}`` when omitted).
    ``evaluate``: called with the written program's path before the manifest is written; what
    it returns, ``{section name: section}`` (``precisions``, ``baseline``), goes into the
    manifest (empty sections are left out).

    Raises:
        TrainingError: the program cannot be written (disk full, permissions).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MANIFEST).unlink(missing_ok=True)  # an older artifact is incomplete from here on
    # An older job's int8 program must not ride along in model.tar.gz when this job writes none
    # (a stop, int8-calibration-images=0 or a failed quantization).
    (model_dir / INT8_PROGRAM).unlink(missing_ok=True)
    program = export(model, pre.crop)
    atomic_write(model_dir / PROGRAM, lambda p: torch.export.save(program, str(p)),
                 "the model program")
    digest = _sha256(model_dir / PROGRAM)
    sections = evaluate(model_dir / PROGRAM) if evaluate is not None else {}
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
    manifest.update({name: value for name, value in sections.items() if value})
    path = model_dir / MANIFEST
    atomic_write(path, lambda p: p.write_text(json.dumps(manifest, indent=2)), "the manifest")
    return path
