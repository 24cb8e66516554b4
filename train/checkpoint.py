"""Atomic checkpoints in /opt/ml/checkpoints, and resuming from the newest valid one.

SageMaker syncs /opt/ml/checkpoints with ``checkpoint_s3_uri``; a managed spot job that was
interrupted restarts with that folder filled (AWS doc: "Use checkpoints in Amazon SageMaker").
A checkpoint is written to a temporary name, flushed to disk, then renamed, so an interruption
leaves either the old file or the new one, never half of one. A file that still fails to load
(cut off by a sync) is set aside as ``NAME.unreadable`` (kept for a look, never tried again) and
the one before it is used.

Names: ``epoch-NNNN.pt`` after NNNN whole epochs; ``epoch-NNNN-step-SSSSSS.pt`` after NNNN
whole epochs and SSSSSS training steps of the next one (a stop between two epoch ends).
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

PATTERN = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.pt$")
KEEP = 2  # newest checkpoints kept; older ones are deleted after a successful write
UNREADABLE_SUFFIX = ".unreadable"


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "file",
                 before_replace: Callable[[Path], None] | None = None) -> None:
    """Write ``path`` through ``write(temporary path)``, fsync and rename, so a crash or a full
    disk leaves the previous file (or none), never half of one. The temporary name keeps the
    final suffix (torch.export wants ``.pt2``) and starts with a dot; it is removed when
    anything fails. ``before_replace(temporary path)`` runs once the new file is complete on
    disk, just before it takes the place of ``path``.

    Raises:
        TrainingError: anything ``write``, the fsync, ``before_replace`` or the rename raised (a
            full disk, permissions; torch's writers raise RuntimeError for a full disk), named
            in the message; the previous file at ``path`` stays.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the cause to report is the first failure
            pass
        raise TrainingError(f"cannot write {what} {path}: {failure_cause(exc)}; earlier files "
                            f"are kept") from exc


def failure_cause(exc: BaseException) -> str:
    """What made a write fail, in a few words: "no space left on the device" when an OSError
    with ENOSPC (or EDQUOT) is ``exc`` or in its chain (torch's writers raise a RuntimeError
    during handling of the OSError), else the exception's type and first line."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "no space left on the device"
        if isinstance(e, OSError) and e.errno == errno.EDQUOT:
            return "disk quota exceeded"
        e = e.__cause__ or e.__context__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else 'no message'}"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` with ``atomic_write``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write, "checkpoint")


def name(epochs_done: int, step: int = 0) -> str:
    """The file name of the checkpoint after ``epochs_done`` whole epochs and ``step`` training
    steps of the next epoch."""
    return f"epoch-{epochs_done:04d}.pt" if step == 0 else f"epoch-{epochs_done:04d}-step-{step:06d}.pt"


def position(path: Path) -> tuple[int, int]:
    """``(epochs_done, step)`` from a checkpoint's file name.

    Raises:
        ValueError: not a checkpoint name.
    """
    m = PATTERN.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint name")
    return int(m.group(1)), int(m.group(2) or 0)


def save(checkpoint_dir: Path, epochs_done: int, state: dict, step: int = 0) -> Path:
    """Write ``state`` as the checkpoint after ``epochs_done`` whole epochs and ``step`` steps
    of the next one, then delete the checkpoints older than it beyond the newest ``KEEP``
    (never the one just written). Returns the path.

    Raises:
        TrainingError: the disk is full or not writable (earlier checkpoints are kept).
    """
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / name(epochs_done, step)
    atomic_save(state, path)
    older = [p for p in list_checkpoints(checkpoint_dir) if position(p) < (epochs_done, step)]
    for old in older[KEEP - 1:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint files in ``checkpoint_dir``, newest (most training done) first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir() if PATTERN.match(p.name)]
    return sorted(found, key=position, reverse=True)


def load_latest(checkpoint_dir: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads and its path, or None. Loaded with
    ``weights_only=True`` (tensors, numbers, strings and containers only: no arbitrary
    unpickling). Newer files that fail to load are renamed ``NAME.unreadable``, so that the
    checkpoints this job writes from here on are never outranked by them."""
    for path in list_checkpoints(checkpoint_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a cut-off file raises RuntimeError, EOFError, pickle errors...
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            logger.warning("skipping unreadable checkpoint %s (kept as %s): %s", path.name,
                           aside.name, exc)
            try:
                path.replace(aside)
            except OSError as move_exc:
                logger.warning("could not set %s aside: %s", path.name, move_exc)
            continue
        logger.info("resuming from checkpoint %s", path.name)
        return state, path
    return None


def rng_state(cuda: bool) -> dict:
    """Every random generator a training process draws from (Python's, numpy's global, torch's
    CPU and, with ``cuda``, each GPU's), in types ``torch.load(weights_only=True)`` reads."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
    }


def set_rng_state(state: dict, cuda: bool) -> None:
    """Restore what ``rng_state`` returned."""
    import random

    import numpy as np

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if cuda and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
