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

import contextlib
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


# ------------------------------------------------- checkpoints outside checkpoint_s3_uri
CHANNEL = "checkpoints"  # the input channel that seeds a resumed job's checkpoint folder
OUTPUT_SUBDIR = "checkpoints"  # under /opt/ml/output/data: where a stop keeps its checkpoint


def _copy(read: Callable[[], Any], path: Path) -> None:
    """Write the stream ``read()`` opens to ``path`` atomically (atomic_write), in chunks."""
    import shutil

    def write(tmp: Path) -> None:
        with read() as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    atomic_write(path, write, "checkpoint")


def _channel_checkpoints(channel_dir: Path) -> dict[str, Callable[[], Any]]:
    """Checkpoint name -> opener of its bytes, for every checkpoint in the channel: files with
    a checkpoint name anywhere under it, and such members of any ``*.tar.gz`` in it (a job's
    output.tar.gz holds them under ``data/checkpoints/``). Only a member's base name is used, so
    an archive's paths never leave the checkpoint folder; links and other non-files are skipped.
    The first one found of a name wins."""
    import tarfile

    found: dict[str, Callable[[], Any]] = {}
    for path in sorted(Path(channel_dir).rglob("*")):
        if not path.is_file():
            continue
        if PATTERN.match(path.name):
            found.setdefault(path.name, lambda p=path: open(p, "rb"))
        elif path.name.endswith(".tar.gz"):
            try:
                with tarfile.open(path, "r:gz") as tar:
                    members = [m for m in tar.getmembers()
                               if m.isfile() and PATTERN.match(Path(m.name).name)]
            except (tarfile.TarError, OSError, EOFError) as exc:
                logger.warning("checkpoints channel: skipping %s, not a readable tar.gz: %s",
                               path.name, exc)
                continue
            for m in members:
                found.setdefault(Path(m.name).name,
                                 lambda a=path, n=m.name: _tar_member(a, n))
    return found


@contextlib.contextmanager
def _tar_member(archive: Path, member: str):
    """The bytes of one regular-file ``member`` of the tar.gz ``archive``, as a stream."""
    import tarfile

    with tarfile.open(archive, "r:gz") as tar:
        yield tar.extractfile(member)


def seed_from_channel(channel_dir: Path, checkpoint_dir: Path) -> list[Path]:
    """Copy the ``checkpoints`` channel's checkpoints that are newer than every one in
    ``checkpoint_dir`` into it, so that the job resumes from them (``load_latest``), as a
    managed spot restart resumes from a synced ``checkpoint_s3_uri``. The channel holds
    checkpoint files (``epoch-NNNN[-step-SSSSSS].pt`` anywhere under it: a copy of another job's
    checkpoint_s3_uri prefix) or a stopped job's ``output.tar.gz``, whose
    ``data/checkpoints/`` holds the stop's checkpoint when its checkpoints were synced nowhere
    (``keep_in_output``). Checkpoints already in the folder and newer win: a restarted job goes
    on from its own. Returns the files written, newest first (loading them is ``load_latest``'s
    job: one that does not load is set aside there).

    Raises:
        TrainingError: the channel holds no checkpoint, or one cannot be written (a full disk).
    """
    found = _channel_checkpoints(Path(channel_dir))
    if not found:
        raise TrainingError(
            f"the {CHANNEL!r} channel holds no checkpoint: give it checkpoint files "
            f"(epoch-NNNN.pt, epoch-NNNN-step-SSSSSS.pt) or a stopped job's output.tar.gz (its "
            f"data/{OUTPUT_SUBDIR}/ holds the stop's checkpoint)")
    present = list_checkpoints(Path(checkpoint_dir))
    newest = position(present[0]) if present else (-1, -1)
    written = []
    for name in sorted(found, key=lambda n: position(Path(n)), reverse=True):
        if position(Path(name)) <= newest:
            continue
        target = Path(checkpoint_dir) / name
        _copy(found[name], target)
        written.append(target)
    if written:
        logger.info("checkpoints channel: %s copied into %s", ", ".join(p.name for p in written),
                    checkpoint_dir)
    else:
        logger.info("checkpoints channel: %s already holds %s, newer than the channel's %s",
                    checkpoint_dir, present[0].name, ", ".join(sorted(found)))
    return written


def keep_in_output(checkpoint_dir: Path, output_data_dir: Path) -> Path | None:
    """Copy the newest checkpoint of ``checkpoint_dir`` into ``output_data_dir/checkpoints/``,
    which SageMaker packs into output.tar.gz even for a stopped job: for a job whose
    checkpoint folder is synced nowhere (no ``checkpoint_s3_uri``, or the SDK's local mode,
    which ignores it), the stop's checkpoint would otherwise be lost with the instance. A
    following job resumes from it through its ``checkpoints`` channel (``seed_from_channel``).
    Returns the copy, or None when there is no checkpoint.

    Raises:
        TrainingError: the copy cannot be written (a full disk); no partial file is left.
    """
    present = list_checkpoints(Path(checkpoint_dir))
    if not present:
        return None
    target = Path(output_data_dir) / OUTPUT_SUBDIR / present[0].name
    _copy(lambda: open(present[0], "rb"), target)
    logger.info("checkpoints are synced nowhere: %s kept in the job's output (output.tar.gz: "
                "data/%s/); give it to the next job as its %r channel to resume", present[0].name,
                OUTPUT_SUBDIR, CHANNEL)
    return target
