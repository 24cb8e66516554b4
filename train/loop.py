"""One training process: the model and its optimiser, the epoch loop, the final evaluation.

Runs alone (one CPU or GPU) or as one rank of a DDP group started by torchrun (train/entry.py
decides; train/distributed.py). Rank 0 alone prints metric lines and writes checkpoints, the
artifact and reports; every rank computes, and metrics are summed across ranks before they are
printed. The other jobs of a training process have modules of their own, each used from here:

- train/feed.py: the channels' datasets and DataLoaders, and where a pass starts;
- train/step.py: how a batch becomes a loss and an update (mixed precision, loss scaling);
- train/evaluation.py: a pass over the valid or test channel, and its confusion matrix;
- train/run_state.py: where training stands, its checkpoints and the resume from them;
- train/stop_protocol.py: the graceful stop (SIGTERM or SIGINT, train/stop_signal.py, honoured
  between two steps by every rank at the same step: a checkpoint of that exact position, a
  model, a failure reason);
- train/export/exporter.py: the artifact and its post-training passes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from train import data, evaluation, metrics, model as model_lib, outputs, stop_protocol, stop_signal
from train.debugger import Debugger
from train.distributed import Dist, seed_all
from train.errors import TrainingError
from train.export.exporter import Exporter, summary
from train.feed import Feed
from train.job import Job
from train.run_state import Checkpoints, RunState, new_accumulators
from train.step import Step
from train.step_sums import StepSums, read_or_fail
from train.stop_protocol import JobStopped, StopAgreed

__all__ = ["Dist", "Job", "JobStopped", "Trainer", "run"]
logger = logging.getLogger(__name__)


class Trainer:
    """Holds the model, optimiser and loaders of one training process, resumed from the newest
    checkpoint in ``job.checkpoint_dir`` when there is one; ``state`` says where it stands."""

    def __init__(self, job: Job, d: Dist):
        self.job, self.d = job, d
        hp = job.hyperparameters
        self.hp = hp
        seed_all(hp.seed + d.rank)
        self.device = d.device()
        self.cuda = self.device.type == "cuda"
        self.classes = data.discover_classes(job.channels)
        self.pre = data.Preprocess.for_size(hp.image_size)
        # Before the Feed and the model, where the loop always built its tensors: built after
        # them, CPU steps ran slower (tests/train/test_rules.py's slow loader), cause not found.
        self.step = Step(self.device, self.pre, hp.amp and self.cuda)
        self.feed = Feed(job.channels, self.classes, self.pre, hp, d, self.cuda)
        self.steps_per_epoch = self.feed.steps_per_epoch
        self.net = model_lib.build(hp.arch, len(self.classes))
        self.backbone: set[str] = set()
        if hp.pretrained:
            self.backbone = model_lib.load_pretrained(self.net, hp.arch,
                                                      job.channels.get("pretrained"))
        elif hp.freeze_epochs:
            logger.info("pretrained=false: freeze-epochs ignored (nothing pretrained to keep)")
        self.net.to(self.device, memory_format=self.step.memory_format)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr, momentum=hp.momentum,
                                         weight_decay=hp.weight_decay, nesterov=hp.momentum > 0)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=hp.epochs)
        self.model = self.net
        self.find_unused: bool | None = None
        self._wrap(bool(self.backbone and hp.freeze_epochs))
        self.state = RunState()
        self.skipped = 0  # unreadable photos of the last epoch, summed over the ranks
        self.checkpoints = Checkpoints(job.checkpoint_dir, d, self.cuda, hp.arch,
                                       self.classes, self.net, self.optimizer, self.scheduler,
                                       self.step.scaler)
        if self.checkpoints.resume(self.state, hp.epochs):
            logger.info("resumed after epoch %d, step %d of %d (of %d epochs)", self.state.epoch,
                        self.state.step, self.steps_per_epoch, hp.epochs)
        # Before the hook: smdebug's import (train/debugger/hook.py) runs while the workers decode.
        self.start_workers()
        self.exporter = Exporter(job, self.classes, self.pre, self.feed, self.device)
        # After the resume: the hook counts steps from 0 in every process, so it spreads its
        # saves over the steps this process will train, not the whole job's.
        self.debugger = Debugger(hp.debugger_rules, hp.profiler_steps,
                                 job.input_config_dir, Path(job.output_data_dir) / "report",
                                 self.net, self.loss_fn, self.planned_steps(), d.main, self.cuda,
                                 job.job_name)

    def _wrap(self, find_unused: bool) -> None:
        """In DDP, (re)wrap the network; ``find_unused`` while the backbone is frozen."""
        if self.d.enabled and find_unused != self.find_unused:
            self.model = self.net  # the old wrapper goes before the new one hooks the weights
            self.model = self.d.wrap(self.net, self.cuda, find_unused)
            self.find_unused = find_unused

    def planned_steps(self) -> int:
        """Training steps this process will run if no epoch stops early: batches per epoch times
        the epochs left after the checkpoint it resumed from, less the steps of the resumed
        epoch already done."""
        return self.steps_per_epoch * (self.hp.epochs - self.state.epoch) - self.state.step

    def start_workers(self) -> None:
        """Fork every loader's DataLoader workers now, before the first step (the constructor
        calls this, after the resume; train/feed.py says why)."""
        self.feed.start_workers(self.state.epoch, self.state.step)

    def _stop_agreed(self) -> bool:
        return stop_protocol.agreed(self.d, self.device)

    def stop_job(self, phase: str) -> None:
        """After an agreed stop: the checkpoint of this position, a model from the best weights
        so far, the failure reason (train/stop_protocol.py).

        Raises:
            JobStopped: always; its message is the job's FailureReason.
        """
        stop_protocol.stop_job(
            phase, self.state, self.hp.epochs, self.steps_per_epoch,
            lambda: self.checkpoints.save(self.state),
            lambda: self.exporter.write_stopped(phase, self.state, self.net,
                                                self.steps_per_epoch),
            self.d, Path(self.job.output_data_dir).parent)

    # ---------------------------------------------------------------- steps
    def _forward(self, images: torch.Tensor, labels: torch.Tensor):
        """Logits, mean loss and labels on the device for a batch from the loaders (Step)."""
        return self.step.forward(self.model, self.loss_fn, images, labels)

    def train_epoch(self, epoch: int, start: int = 0) -> dict:
        """Train ``epoch`` from step ``start`` (0, or where a resumed job stopped, with the
        running sums it restored) to its end.

        Raises:
            StopAgreed: every rank agreed to stop (after a whole step).
            TrainingError: a non-finite loss, or no readable image in the channel.
        """
        frozen = bool(self.backbone) and epoch < self.hp.freeze_epochs
        trainable = model_lib.set_backbone_frozen(self.net, self.backbone, frozen)
        self._wrap(find_unused=frozen)
        self.model.train()
        if frozen:
            model_lib.freeze_batchnorm_stats(self.net)
        state = self.state
        if start == 0:
            state.acc = new_accumulators()
        state.epoch, state.step = epoch, start
        self.debugger.mode(train=True)
        batches = self.debugger.steps(self.feed.batches("train", epoch, start=start), epoch)
        acc = state.acc
        sums = StepSums(self.cuda)
        start = time.perf_counter()
        for images, labels, n_skipped in batches:
            acc["skipped"] += n_skipped
            if images.numel() == 0 and self.d.enabled:
                self.step.join_with_no_images(self.model, self.net, self.optimizer)
            elif images.numel() > 0:
                self.debugger.step_begin()
                logits, loss, labels = self._forward(images, labels)
                sums.add(state.step, loss, logits, labels)
                if sums.due:  # every step on a CPU: a non-finite loss stops before its update
                    self._read_sums(sums, epoch)
                self.step.update(loss, self.optimizer)
                # On a GPU the step may still be running: its time here is the host's, which
                # the reads every few steps (StepSums) keep within a few steps of the device.
                self.debugger.step_end(labels.shape[0])
            state.step += 1
            if self._stop_agreed():
                self._read_sums(sums, epoch)
                acc["seconds"] += time.perf_counter() - start
                self.debugger.epoch_end()
                raise StopAgreed("train")
        self._read_sums(sums, epoch)
        acc["seconds"] += time.perf_counter() - start
        self.debugger.epoch_end()
        loss_sum, correct, seen, skipped = self.d.sum(
            [acc["loss_sum"], acc["correct"], acc["seen"], acc["skipped"]], self.device)
        if seen == 0:
            raise TrainingError("no readable image in the train channel")
        logger.info("epoch %d: %s backbone, %d trainable parameters", epoch + 1,
                    "frozen" if frozen else "trainable", trainable)
        self.skipped = int(skipped)
        return {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "images_per_second": seen / max(acc["seconds"], 1e-9),
            "epoch_seconds": acc["seconds"],
        }

    def _read_sums(self, sums: StepSums, epoch: int) -> None:
        read_or_fail(sums, self.state.acc, epoch, self.hp.lr, self.state.epochs_done)

    def evaluate(self, split: str, confusion: bool = False
                 ) -> tuple[dict, outputs.Confusion | None]:
        """Loss, top-1 and top-5 accuracy on ``split`` (summed over ranks); optionally the
        confusion matrix (train/evaluation.py).

        Raises:
            StopAgreed: every rank agreed to stop (the pass is abandoned).
            TrainingError: no readable image in the channel.
        """
        self.model.eval()
        self.debugger.mode(train=False)
        return evaluation.evaluate(split, self.feed.batches(split), self._forward,
                                   len(self.classes), self.d, self.device, self._stop_agreed,
                                   confusion)

    # ---------------------------------------------------------------- the job
    def fit(self) -> None:
        """Train the epochs left, validating and checkpointing after each.

        Raises:
            StopAgreed: every rank agreed to stop.
            TrainingError: a non-finite loss, or no readable image.
        """
        hp, state = self.hp, self.state
        patience = hp.early_stopping_patience
        self.debugger.start(self.planned_steps())
        if state.epochs_done < hp.epochs and self._stop_agreed():
            raise StopAgreed("train")  # asked to stop before the first step
        for epoch in range(state.epoch, hp.epochs):
            state.epoch = epoch
            lr = self.optimizer.param_groups[0]["lr"]
            row = {"epoch": epoch + 1}
            row.update(self.train_epoch(epoch, start=state.step))
            valid, _ = self.evaluate("valid")
            row.update(valid)
            row["learning_rate"] = lr
            self.scheduler.step()
            state.end_epoch(row, self.net)
            if self.d.main:
                metrics.log_metrics({k: row[k] for k in metrics.EPOCH_METRICS if k in row})
                if self.skipped:
                    logger.warning("epoch %d skipped %d unreadable images", epoch + 1,
                                   self.skipped)
            self.checkpoints.save(state)
            if patience and epoch + 1 - state.best["epoch"] >= patience:
                logger.info("early stopping: no better valid_loss for %d epochs (best: epoch %d)",
                            patience, state.best["epoch"])
                break
            if epoch + 1 < hp.epochs and self._stop_agreed():
                raise StopAgreed("train")  # asked during the checkpoint write: nothing more to save

    def finish(self) -> None:
        """Evaluate the best weights on test (or valid), log the final line, and on rank 0 write
        the artifact, then its post-training passes (unless a stop came first: it ends them) and
        the reports (a failure in a pass or a report is logged; the job keeps its model).

        Raises:
            StopAgreed: every rank agreed to stop during the final evaluation.
        """
        state = self.state
        if state.best_state is not None:
            self.net.load_state_dict(state.best_state)
        split = "test" if "test" in self.feed.loaders else "valid"
        final, matrix = self.evaluate(split, confusion=True)
        if split == "test" and self.d.main:
            metrics.log_metrics(final)
        self.debugger.close()
        if not self.d.main:
            return
        self.exporter.write(self.net.state_dict(), summary(final, state),
                            {"complete": True, "epochs": self.hp.epochs,
                             "epochs_completed": state.epochs_done,
                             "weights_from": f"epoch {state.best['epoch']}"},
                            passes_on=None if stop_signal.requested() else split)
        self.exporter.written = True
        if stop_signal.requested():
            return  # run() reports the stop; the reports are what a stop may skip
        try:
            labels = [data.readable_label(c) for c in self.classes]
            outputs.write(Path(self.job.output_data_dir), state.history, final, labels, matrix,
                          split)
        except Exception:  # noqa: BLE001 - the model is written: keep the job, say what is missing
            logger.exception("metrics.json and the plots not written")
        try:
            self.debugger.report(state.history)
        except Exception:  # noqa: BLE001 - likewise
            logger.exception("debugger report not written")


def run(job: Job, d: Dist | None = None) -> None:
    """Train, evaluate and write the artifact.

    Raises:
        JobStopped: SIGTERM or SIGINT stopped the job (its checkpoint and model are written).
        TrainingError: bad input or environment (the message is the job's FailureReason).
    """
    d = d or Dist()
    trainer = Trainer(job, d)  # resumes from the newest checkpoint
    try:
        trainer.fit()
        trainer.finish()
    except StopAgreed as stopped:
        trainer.stop_job(stopped.phase)
    except TrainingError:
        # A failing job (a NaN loss) is when the rules matter most: report, then fail.
        try:
            trainer.debugger.report(trainer.state.history)
        except Exception:  # noqa: BLE001 - the job's own failure is the one to report
            logger.exception("could not write the debugger report")
        raise
    if stop_signal.requested():
        trainer.stop_job("finish")
