"""The graceful-stop protocol of a training process: agreeing to stop, and what a stopped job
leaves behind.

train/stop_signal.py turns SIGTERM and SIGINT into a request; this module is what the loop does
with it. Every rank asks, at the same points (after each training step, each evaluation batch and
each checkpoint), whether any rank was asked to stop (``agreed``), so all of them stop after the
same step; the loop then raises ``StopAgreed`` and ``stop_job`` writes the checkpoint of that exact
position and a model from the best weights so far, writes the failure reason and raises
``JobStopped``, whose message is the job's FailureReason:
``stopped by SIGTERM at epoch 3, step 120 of 209; checkpoint checkpoints/epoch-0002-step-000120.pt;
model written from epoch 2``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, NoReturn

import torch

from train import stop_signal
from train.distributed import Dist
from train.errors import TrainingError, write_failure
from train.run_state import RunState

logger = logging.getLogger(__name__)


class JobStopped(TrainingError):
    """The job was stopped (SIGTERM or SIGINT) and wrote its checkpoint and model; the message
    says where it stopped and what it wrote."""


class StopAgreed(Exception):
    """Raised inside the loop when every rank agreed to stop; ``phase`` is where ("train",
    "valid", "test" or "finish")."""

    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


def agreed(d: Dist, device: torch.device) -> bool:
    """Whether to stop now: this rank was asked to, or (in DDP) any rank was. Every rank calls
    it at the same points, so all of them stop after the same step."""
    return d.any(stop_signal.requested(), device)


def where(phase: str, run: RunState, epochs: int, steps_per_epoch: int) -> str:
    """Where the job stopped, for its reason: "after all 3 epochs", "at epoch 2, step 3 of 5
    (in its validation pass)"."""
    if run.epochs_done >= epochs:
        return f"after all {run.epochs_done} epochs"
    return (f"at epoch {run.epoch + 1}, step {run.step} of {steps_per_epoch}"
            + (" (in its validation pass)" if phase == "valid" else ""))


def stop_job(phase: str, run: RunState, epochs: int, steps_per_epoch: int,
             save_checkpoint: Callable[[], Path | None], write_model: Callable[[], str],
             d: Dist, failure_dir: Path) -> NoReturn:
    """After an agreed stop, on every rank: write the checkpoint of this position
    (``save_checkpoint()``, every rank), then on rank 0 a model (``write_model()``, which says
    what it wrote) and the failure reason in ``failure_dir``; then raise JobStopped.

    Raises:
        JobStopped: always; its message is the job's FailureReason.
    """
    started = time.monotonic()
    logger.info("stopping at epoch %d, step %d of %d (%s)", run.epoch + 1, run.step,
                steps_per_epoch, phase)
    name = stop_signal.signal_name() or "a stop request"
    place = where(phase, run, epochs, steps_per_epoch)
    try:
        path = save_checkpoint()
    except TrainingError as exc:  # a full disk: the model may still fit
        path, ckpt_note = None, f"checkpoint not written ({exc})"
    else:
        ckpt_note = f"checkpoint {path.parent.name}/{path.name}" if path is not None else ""
    model_note = write_model() if d.main else ""
    reason = f"stopped by {name} {place}; " + "; ".join(n for n in (ckpt_note, model_note) if n)
    if d.main:
        logger.warning("%s (the stop took %.1f s)", reason, time.monotonic() - started)
        write_failure(failure_dir, reason)
    d.barrier()  # no rank exits (and so ends the group) before rank 0 has written
    raise JobStopped(reason)
