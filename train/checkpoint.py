"""Atomic checkpoints in /opt/ml/checkpoints, and resuming from the newest valid one.

SageMaker syncs /opt/ml/checkpoints with ``checkpoint_s3_uri``; a managed spot job that was
interrupted restarts with that folder filled (AWS doc: "Use checkpoints in Amazon SageMaker").
A checkpoint is written to a temporary name, flushed to disk, then renamed, so an interruption
leaves either the old file or the new one, never half of one. A file that still fails to load
(cut off by a sync) is skipped for the one before it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from train.errors import TrainingError

logger = logging.getLogger(__name__)

PATTERN = re.compile(r"^epoch-(\d{4,})\.pt$")
KEEP = 2  # newest checkpoints kept; older ones are deleted after a successful write


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "file") -> None:
    """Write ``path`` through ``write(temporary path)``, fsync and rename, so a crash or a full
    disk leaves the previous file (or none), never half of one. The temporary name keeps the
    final suffix (torch.export wants ``.pt2``) and starts with a dot.

    Raises:
        TrainingError: the disk is full or not writable (the previous file at ``path`` stays).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        cause = "no space left on the device" if exc.errno == errno.ENOSPC else str(exc)
        raise TrainingError(f"cannot write {what} {path}: {cause}; earlier files are "
                            f"kept") from exc


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` with ``atomic_write``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write, "checkpoint")


def save(checkpoint_dir: Path, epoch: int, state: dict) -> Path:
    """Write ``state`` as the checkpoint after ``epoch`` (1-based count of finished epochs) and
    delete all but the newest ``KEEP``. Returns the path."""
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / f"epoch-{epoch:04d}.pt"
    atomic_save(state, path)
    for old in list_checkpoints(checkpoint_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint files in ``checkpoint_dir``, newest epoch first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(checkpoint_dir: Path) -> dict | None:
    """The newest checkpoint that loads, or None. Loaded with ``weights_only=True`` (tensors,
    numbers, strings and containers only: no arbitrary unpickling)."""
    for path in list_checkpoints(checkpoint_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a cut-off file raises RuntimeError, EOFError, pickle errors...
            logger.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
            continue
        logger.info("resuming from checkpoint %s", path.name)
        return state
    return None
