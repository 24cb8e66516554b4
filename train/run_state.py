"""Where training stands, and its checkpoints: what one is made of, writing it, resuming from it.

A checkpoint holds everything the next step depends on (train/checkpoint.py writes the files
atomically): the position (whole epochs done, training steps of the next one, its running
sums), the weights, the optimizer, the learning-rate schedule, the AMP scaler, every rank's
random generators, the metric history and the early-stopping state. A job resumed from it trains
on from the same sample and ends with the weights an uninterrupted job ends with
(tests/train/test_stop_resume.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from train import checkpoint
from train.distributed import Dist
from train.errors import TrainingError

logger = logging.getLogger(__name__)


def new_accumulators() -> dict:
    """The running sums of an epoch's training steps (kept in mid-epoch checkpoints)."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0}


@dataclass
class RunState:
    """Where training stands: ``epoch`` (0-based) in progress, ``step`` training steps of it
    done and their running sums ``acc``; the ``history`` of whole epochs (one metrics row each);
    the ``best`` valid_loss so far, its epoch (1-based; -1 for none) and its weights
    (``best_state``, on the CPU)."""

    epoch: int = 0
    step: int = 0
    acc: dict = field(default_factory=new_accumulators)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"valid_loss": math.inf, "epoch": -1})
    best_state: dict | None = None

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def end_epoch(self, row: dict, net: nn.Module) -> bool:
        """Record the epoch just trained and validated (``row``: its metrics) and move to the
        start of the next; keep ``net``'s weights when its valid_loss is the best so far.
        Returns whether it was."""
        self.history.append(row)
        self.epoch, self.step, self.acc = row["epoch"], 0, new_accumulators()
        improved = row["valid_loss"] < self.best["valid_loss"]
        if improved:
            self.best = {"valid_loss": row["valid_loss"], "epoch": row["epoch"]}
            self.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return improved


class Checkpoints:
    """Writes and resumes the checkpoints of one training process in ``folder`` (rank 0
    writes; every rank takes part, since each rank's generators go in)."""

    def __init__(self, folder: str, d: Dist, cuda: bool, arch: str, classes: list[str],
                 net: nn.Module, optimizer, scheduler, scaler):
        self.folder, self.d, self.cuda = Path(folder), d, cuda
        self.arch, self.classes = arch, classes
        self.net, self.optimizer, self.scheduler, self.scaler = net, optimizer, scheduler, scaler
        self.saved: tuple[int, int] | None = None  # (epochs done, step) of the newest on disk

    def state_dict(self, run: RunState, rng: list[dict]) -> dict:
        """What a checkpoint holds (``rng``: every rank's generators, in rank order)."""
        return {
            "epoch": run.epochs_done,  # whole epochs done
            "step": run.step,  # training steps of the next epoch done
            "accumulators": dict(run.acc),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": run.history,
            "best": run.best,
            "best_state": run.best_state,
            "classes": self.classes,
            "arch": self.arch,
        }

    def save(self, run: RunState) -> Path | None:
        """Write the checkpoint of where training stands now, unless the newest one on disk
        is of the same position; every rank calls this (the generators are gathered). Returns
        the path of the checkpoint of this position on rank 0, else None.

        Raises:
            TrainingError: it cannot be written (a full disk); earlier checkpoints are kept.
        """
        position = (run.epochs_done, run.step)
        if position == self.saved:
            return self.folder / checkpoint.name(*position)
        rng = self.d.gather(checkpoint.rng_state(self.cuda))
        self.saved = position  # on every rank: each decides alike whether to gather next time
        if not self.d.main:
            return None
        return checkpoint.save(self.folder, position[0], self.state_dict(run, rng),
                               step=position[1])

    def resume(self, run: RunState, epochs: int) -> bool:
        """Load the newest checkpoint in the folder, if any, into ``run`` and the model,
        optimizer, schedule and scaler, and this rank's generators; a job with another
        ``epochs`` follows the cosine schedule of the new count. Returns whether one was
        loaded.

        Raises:
            TrainingError: the checkpoint is for another arch or class list.
        """
        found = checkpoint.load_latest(self.folder)
        if found is None:
            return False
        state, path = found
        if state.get("arch") != self.arch or state.get("classes") != self.classes:
            raise TrainingError(
                f"the checkpoint in {self.folder} is for arch {state.get('arch')!r} with "
                f"{len(state.get('classes') or [])} classes, not {self.arch!r} with "
                f"{len(self.classes)}; empty the checkpoint folder (or checkpoint_s3_uri) to "
                f"start afresh"
            )
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        else:  # saved without loss scaling (bf16, or the CPU), resumed with it (fp16)
            logger.info("the checkpoint has no loss scale (saved without fp16); starting one")
        run.history = list(state["history"])
        run.best = dict(state["best"])
        run.best_state = state.get("best_state")
        run.epoch, run.step = int(state["epoch"]), int(state.get("step", 0))
        if run.step and state.get("accumulators"):
            run.acc = dict(state["accumulators"])
        rng = state.get("rng") or []
        if self.d.rank < len(rng):
            checkpoint.set_rng_state(rng[self.d.rank], self.cuda)
        self.saved = checkpoint.position(path)
        self._follow_epochs(epochs)
        return True

    def _follow_epochs(self, epochs: int) -> None:
        """A resumed job whose ``epochs`` changed follows the cosine schedule of the new count:
        the learning rate of the epoch in progress is set from the closed form. The scheduler's
        next step() goes on from the optimizer's learning rates (its recursive form reads them),
        so nothing else of it needs setting; get_last_lr() catches up at that step."""
        s = self.scheduler
        if s.T_max == epochs:
            return
        logger.info("epochs changed from %d to %d: the learning rate follows the new schedule",
                    s.T_max, epochs)
        s.T_max = epochs
        t = min(s.last_epoch, s.T_max)
        for group, base in zip(self.optimizer.param_groups, s.base_lrs):
            group["lr"] = s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * t / s.T_max)) / 2
