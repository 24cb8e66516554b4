"""The model a training process leaves: the fp32 artifact, then the post-training passes that
add to it, and the partial model of a stopped job.

Rank 0 writes it from a fresh copy of the network (no DDP wrapper, no debugger hooks)
through train/export/artifact.py: the complete fp32 program and its manifest first, so the job
has a servable model before anything optional runs. The passes then add to it, in
train/export/post_training.py's order: the int8 program (train/export/quantize.py), the serving
precisions measured on a channel (train/export/precision.py) and the drift baseline
(train/export/baseline.py). A pass that fails is logged and recorded, and a stop ends them; the
manifest's ``post_training`` section says which did not run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from contract.artifact import MAX_BATCH, PROGRAM, file_sha256
from train import model as model_lib, stop_signal
from train.data import Preprocess
from train.errors import TrainingError
from train.export import artifact, baseline, post_training, precision, quantize
from train.feed import Feed
from train.job import Job
from train.run_state import RunState

logger = logging.getLogger(__name__)


def summary(final: dict, run: RunState) -> dict:
    """The manifest's ``metrics``: ``final`` (the test or valid metrics of the weights
    exported), the last epoch's valid loss and accuracy, and the best epoch."""
    out = dict(final)
    if run.history:
        out.update({k: run.history[-1][k] for k in ("valid_loss", "valid_accuracy")})
    out["best_epoch"] = run.best["epoch"]
    return out


class Exporter:
    """Writes one training process's artifact to ``job.model_dir`` (rank 0 only)."""

    def __init__(self, job: Job, classes: list[str], pre: Preprocess, feed: Feed,
                 device: torch.device):
        self.job, self.hp, self.classes, self.pre = job, job.hyperparameters, classes, pre
        self.feed, self.device = feed, device
        self.model_dir = Path(job.model_dir)
        self.written = False  # the complete model (not a stopped job's partial one) is written
        self.post_training: dict = {}  # the last artifact's manifest section of that name

    def write(self, weights: dict, metrics: dict, training: dict | None = None,
              passes_on: str | None = None) -> Path:
        """Export ``weights`` (a state_dict of this arch) as a complete fp32 artifact; returns
        the manifest's path. With ``passes_on`` (a split), the post-training passes then add to
        it: an int8 program (with int8-calibration-images > 0), the serving precisions
        measured on that split, and the drift baseline.

        Raises:
            TrainingError: the artifact cannot be written (disk full, permissions).
        """
        plain = model_lib.build(self.hp.arch, len(self.classes))
        plain.load_state_dict({k: v.cpu() for k, v in weights.items()})
        passes = self._passes(plain, passes_on) if passes_on else {}
        off = ({"int8_calibration": "int8-calibration-images=0"}
               if passes_on and not self.hp.int8_calibration_images else {})
        stopped = f"stopped by {stop_signal.signal_name()}" if stop_signal.requested() else None
        self.post_training = post_training.plan(passes, off, stopped)
        manifest = artifact.write(self.model_dir, plain, self.hp.arch, self.classes, self.pre,
                                  self.job.job_name, metrics, self.hp.as_dict(), training,
                                  {"post_training": self.post_training})
        logger.info("model artifact written: %s", self.model_dir)
        post_training.run(self.model_dir, self.post_training, passes)
        return manifest

    def _passes(self, plain: nn.Module, split: str) -> dict[str, post_training.Pass]:
        """The post-training passes over the artifact of ``plain``, name -> pass; each iterates
        its batches through ``stop_signal.checked``. ``split``: where the precisions are
        measured."""
        program = self.model_dir / PROGRAM
        programs: dict[str, Path] = {}  # precision -> the program a pass wrote for it

        def int8_calibration() -> tuple[dict, dict]:
            batches = quantize.calibration_batches(
                self.feed.calibration_dataset(), self.hp.int8_calibration_images,
                self.hp.batch_size)
            path = quantize.write(self.model_dir, quantize.quantize(
                plain, stop_signal.checked(batches), self.pre.crop, MAX_BATCH))
            programs["int8"] = path
            return {}, {"program": path.name, "program_sha256": file_sha256(path)}

        def precisions() -> tuple[dict, dict]:
            return {"precisions": precision.evaluate(
                program, stop_signal.checked(self.feed.unsharded(split)), self.device, split,
                programs or None)}, {}

        def drift_baseline() -> tuple[dict, dict]:
            predictions, confidences = baseline.valid_outputs(
                program, stop_signal.checked(self.feed.unsharded("valid")), self.device)
            return {"baseline": baseline.compute(
                predictions, confidences, len(self.classes), self.feed.train_photos(),
                self.pre.geometry, self.hp.seed)}, {}

        passes = {"int8_calibration": int8_calibration, "precisions": precisions,
                  "baseline": drift_baseline}
        if not self.hp.int8_calibration_images:
            del passes["int8_calibration"]
        return passes

    def write_stopped(self, phase: str, run: RunState, net: nn.Module,
                      steps_per_epoch: int) -> str:
        """The model a stopped job leaves: its best weights so far (else the current ones of
        ``net``, if it trained at all), marked partial in the manifest, unless the complete
        model is written already. Returns what to say of it in the failure reason."""
        done = run.epochs_done
        complete = done >= self.hp.epochs
        if self.written:
            return f"model written from epoch {run.best['epoch']}{self._complete_note()}"
        if run.best_state is not None:
            weights, source = run.best_state, f"epoch {run.best['epoch']}"
        elif done or run.step:
            weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            source = f"the weights after epoch {run.epoch + 1}, step {run.step}"
        else:
            return "no model: stopped before the first training step"
        training = {
            "complete": complete,
            "stopped_by": stop_signal.signal_name(),
            "epochs": self.hp.epochs,
            "epochs_completed": done,
            "epoch_in_progress": None if complete else run.epoch + 1,
            "steps_completed_in_epoch": 0 if complete else run.step,
            "steps_per_epoch": steps_per_epoch,
            "stopped_in": phase,
            "weights_from": source,
        }
        try:
            self.write(weights, summary({}, run), training)
        except TrainingError as exc:
            return f"model not written ({exc})"
        return f"model written from {source}" + (self._complete_note() if complete else "")

    def _complete_note(self) -> str:
        """What the failure reason adds for a model of the whole training: that it is complete,
        and the post-training passes the stop cut."""
        cut = post_training.skipped(self.post_training)
        if not cut:
            return " (training complete)"
        return (f" (training complete; post-training passes skipped: {', '.join(cut)}: "
                f"{'; '.join(post_training.WITHOUT[name] for name in cut)})")
