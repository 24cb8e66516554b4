"""One training process: data, model, epochs, checkpoints, the final evaluation and the artifact.

Runs alone (one CPU or GPU) or as one rank of a DDP group started by torchrun (train/entry.py
decides). Rank 0 alone prints metric lines and writes checkpoints, the artifact and reports;
every rank computes, and metrics are summed across ranks before they are printed.

A stop (SIGTERM or SIGINT, train/stop.py) is honoured between two steps, by every rank at the
same step: a checkpoint of that exact position and a model from the best weights so far are
written, and the job fails with a reason that says so. A job resumed from that checkpoint trains
on from the same sample, with every generator, the optimiser, the schedule, the scaler, the
early-stopping state and the metric history restored: it ends with the weights an uninterrupted
job ends with.
"""

from __future__ import annotations

import atexit
import copy
import contextlib
import functools
import gc
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from contract.artifact import file_sha256
from contract.preprocess import Geometry
from train import artifact, baseline, checkpoint, data, metrics, model as model_lib, outputs
from train import post_training, precision, quantize, stop
from train.debugger import Debugger
from train.errors import TrainingError, write_failure

logger = logging.getLogger(__name__)

# Trainer.start_workers() freezes the objects built before the workers fork (gc.freeze). Objects
# still frozen at exit are never collected, and nanobind (triton's bindings, which torch imports)
# then prints each of its own as a leak: 40 alarming lines per job. Unfreezing is harmless when
# nothing was frozen, so it is registered once, here.
atexit.register(gc.unfreeze)


class JobStopped(TrainingError):
    """The job was stopped (SIGTERM or SIGINT) and wrote its checkpoint and model; the message
    says where it stopped and what it wrote."""


class _Stop(Exception):
    """Raised inside the loop when every rank agreed to stop; ``phase`` is where."""

    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


@dataclass
class Job:
    """Where a training process reads and writes, and what it trains with.

    ``channels``: channel name -> folder. ``hyperparameters``: typed (train.hyperparameters).
    """

    channels: dict[str, str]
    hyperparameters: dict
    model_dir: str
    output_data_dir: str
    checkpoint_dir: str
    input_config_dir: str
    job_name: str = "local"


@dataclass
class Dist:
    """This process's place in the DDP group (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _reduce(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _new_accumulators() -> dict:
    """The running sums of an epoch's training steps (kept in mid-epoch checkpoints)."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0}


@contextlib.contextmanager
def _batchnorm_stats_kept(net: nn.Module):
    """BatchNorm layers keep their running statistics inside the block (momentum 0)."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


class Trainer:
    """Holds the model, optimiser and loaders of one training process, resumed from the newest
    checkpoint in ``job.checkpoint_dir`` when there is one."""

    def __init__(self, job: Job, d: Dist):
        self.job, self.d = job, d
        hp = job.hyperparameters
        self.hp = hp
        _seed(hp["seed"] + d.rank)
        self.device = _device(d)
        self.cuda = self.device.type == "cuda"
        self.amp = bool(hp["amp"]) and self.cuda
        self.classes = data.discover_classes(job.channels)
        self.pre = data.Preprocess.for_size(hp["image-size"])
        self.datasets = data.build_datasets(job.channels, self.classes, self.pre,
                                            hp["min-crop-scale"], hp["max-images-per-class"],
                                            hp["seed"])
        workers = hp["num-workers"] if hp["num-workers"] >= 0 else data.default_num_workers()
        self.loaders = {
            name: data.make_loader(ds, hp["batch-size"], name == "train", workers, hp["seed"],
                                   d.rank, d.world_size, self.cuda)
            for name, ds in self.datasets.items()
        }
        self.steps_per_epoch = len(self.loaders["train"])
        self.net = model_lib.build(hp["arch"], len(self.classes))
        self.backbone: set[str] = set()
        if hp["pretrained"]:
            self.backbone = model_lib.load_pretrained(self.net, hp["arch"],
                                                      job.channels.get("pretrained"))
        elif hp["freeze-epochs"]:
            logger.info("pretrained=false: freeze-epochs ignored (nothing pretrained to keep)")
        memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.memory_format = memory_format
        self.net.to(self.device, memory_format=memory_format)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=hp["label-smoothing"])
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=hp["lr"],
                                         momentum=hp["momentum"],
                                         weight_decay=hp["weight-decay"],
                                         nesterov=hp["momentum"] > 0)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                    T_max=hp["epochs"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.model = self.net
        if d.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[d.local_rank] if self.cuda else None,
                find_unused_parameters=bool(self.backbone and hp["freeze-epochs"]))
        self.history: list[dict] = []
        self._first_pass: dict = {}  # split -> its first epoch's iterator (start_workers)
        # Where training stands: ``epoch`` (0-based) in progress, ``step`` training steps of it
        # done, and its running sums; ``saved`` is the (epochs done, step) of the newest
        # checkpoint on disk.
        self.epoch, self.step, self.acc = 0, 0, _new_accumulators()
        self.saved: tuple[int, int] | None = None
        self.artifact_written = False  # finish() wrote the complete model
        self.post_training: dict = {}  # the last artifact's manifest section of that name
        self.best = {"valid_loss": math.inf, "epoch": -1}
        self.best_state: dict | None = None
        self.skipped = 0
        self.resume()
        # Before the hook: smdebug's import (train/debugger/hook.py) runs while the workers
        # decode.
        self.start_workers()
        # After resume(): the hook counts steps from 0 in every process, so it spreads its saves
        # over the steps this process will train, not the whole job's.
        self.debugger = Debugger(bool(hp["debugger-rules"]), hp["profiler-steps"],
                                 job.input_config_dir, Path(job.output_data_dir) / "report",
                                 self.net, self.loss_fn, self.planned_steps(), d.main, self.cuda,
                                 job.job_name)

    def planned_steps(self) -> int:
        """Training steps this process will run if no epoch stops early: batches per epoch times
        the epochs left after the checkpoint it resumed from, less the steps of the resumed
        epoch already done."""
        return self.steps_per_epoch * (self.hp["epochs"] - self.epoch) - self.step

    # ---------------------------------------------------------------- checkpoints
    def _all_rng_states(self) -> list[dict]:
        """Every rank's generators (rank 0 writes them all into the checkpoint)."""
        mine = checkpoint.rng_state(self.cuda)
        if not self.d.enabled:
            return [mine]
        gathered: list = [None] * self.d.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def state(self, rng: list[dict]) -> dict:
        return {
            "epoch": len(self.history),  # whole epochs done
            "step": self.step,  # training steps of the next epoch done
            "accumulators": dict(self.acc),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "history": self.history,
            "best": self.best,
            "best_state": self.best_state,
            "classes": self.classes,
            "arch": self.hp["arch"],
        }

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of where training stands now, unless the newest one on disk
        is of the same position; every rank calls this (the generators are gathered). Returns
        the path of the checkpoint of this position on rank 0, else None."""
        position = (len(self.history), self.step)
        if position == self.saved:
            return Path(self.job.checkpoint_dir) / checkpoint.name(*position)
        rng = self._all_rng_states()
        self.saved = position  # on every rank: each decides alike whether to gather next time
        if not self.d.main:
            return None
        return checkpoint.save(Path(self.job.checkpoint_dir), position[0], self.state(rng),
                               step=position[1])

    def resume(self) -> None:
        """Load the newest checkpoint in the job's checkpoint folder, if any (the constructor
        calls this).

        Raises:
            TrainingError: the checkpoint is for another arch or class list.
        """
        found = checkpoint.load_latest(Path(self.job.checkpoint_dir))
        if found is None:
            return
        state, path = found
        if state.get("arch") != self.hp["arch"] or state.get("classes") != self.classes:
            raise TrainingError(
                f"the checkpoint in {self.job.checkpoint_dir} is for arch "
                f"{state.get('arch')!r} with {len(state.get('classes') or [])} classes, not "
                f"{self.hp['arch']!r} with {len(self.classes)}; empty the checkpoint folder "
                f"(or checkpoint_s3_uri) to start afresh"
            )
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.best_state = state.get("best_state")
        self.epoch, self.step = int(state["epoch"]), int(state.get("step", 0))
        if self.step and state.get("accumulators"):
            self.acc = dict(state["accumulators"])
        rng = state.get("rng") or []
        if self.d.rank < len(rng):
            checkpoint.set_rng_state(rng[self.d.rank], self.cuda)
        self.saved = checkpoint.position(path)
        self._follow_epochs()
        logger.info("resumed after epoch %d, step %d of %d (of %d epochs)", self.epoch,
                    self.step, self.steps_per_epoch, self.hp["epochs"])

    def _follow_epochs(self) -> None:
        """A resumed job whose ``epochs`` changed follows the cosine schedule of the new count:
        the learning rate of the epoch in progress is set from the closed form."""
        s = self.scheduler
        if s.T_max == self.hp["epochs"]:
            return
        logger.info("epochs changed from %d to %d: the learning rate follows the new schedule",
                    s.T_max, self.hp["epochs"])
        s.T_max = self.hp["epochs"]
        t = min(s.last_epoch, s.T_max)
        for group, base in zip(self.optimizer.param_groups, s.base_lrs):
            group["lr"] = s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * t / s.T_max)) / 2
        s._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---------------------------------------------------------------- stops
    def _stop_agreed(self) -> bool:
        """Whether to stop now: this rank was asked to, or (in DDP) any rank was. Every rank
        calls it at the same points, so all of them stop after the same step."""
        asked = stop.requested()
        if not self.d.enabled:
            return asked
        flag = torch.tensor([1.0 if asked else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def stop_job(self, phase: str) -> None:
        """After an agreed stop: write the checkpoint of this position and a model from the
        best weights so far, write the failure reason, and raise JobStopped (every rank).

        Raises:
            JobStopped: always; its message is the job's FailureReason.
        """
        started = time.monotonic()
        logger.info("stopping at epoch %d, step %d of %d (%s)", self.epoch + 1, self.step,
                    self.steps_per_epoch, phase)
        name = stop.signal_name() or "a stop request"
        done_epochs = len(self.history)
        where = (f"after all {done_epochs} epochs" if done_epochs >= self.hp["epochs"] else
                 f"at epoch {self.epoch + 1}, step {self.step} of {self.steps_per_epoch}"
                 + (" (in its validation pass)" if phase == "valid" else ""))
        try:
            path = self.save_checkpoint()
        except TrainingError as exc:  # a full disk: the model may still fit
            path, ckpt_note = None, f"checkpoint not written ({exc})"
        else:
            ckpt_note = (f"checkpoint {Path(self.job.checkpoint_dir).name}/{path.name}"
                         if path is not None else "")
        model_note = ""
        if self.d.main:
            model_note = self._write_stopped_artifact(phase)
        reason = (f"stopped by {name} {where}; "
                  + "; ".join(n for n in (ckpt_note, model_note) if n))
        if self.d.main:
            logger.warning("%s (the stop took %.1f s)", reason, time.monotonic() - started)
            write_failure(Path(self.job.output_data_dir).parent, reason)
        if self.d.enabled:
            dist.barrier()  # no rank exits (and so ends the group) before rank 0 has written
        raise JobStopped(reason)

    def _write_stopped_artifact(self, phase: str) -> str:
        """The model a stopped job leaves: its best weights so far (else the current ones, if
        it trained at all), marked partial in the manifest. Returns what to say of it."""
        done = len(self.history)
        complete = done >= self.hp["epochs"]
        if self.artifact_written:
            return f"model written from epoch {self.best['epoch']}{self._complete_note()}"
        if self.best_state is not None:
            weights, source = self.best_state, f"epoch {self.best['epoch']}"
        elif done or self.step:
            weights = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
            source = f"the weights after epoch {self.epoch + 1}, step {self.step}"
        else:
            return "no model: stopped before the first training step"
        training = {
            "complete": complete,
            "stopped_by": stop.signal_name(),
            "epochs": self.hp["epochs"],
            "epochs_completed": done,
            "epoch_in_progress": None if complete else self.epoch + 1,
            "steps_completed_in_epoch": 0 if complete else self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "stopped_in": phase,
            "weights_from": source,
        }
        try:
            self.write_artifact(weights, self._summary({}), training)
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

    # ---------------------------------------------------------------- epochs
    def _forward(self, images: torch.Tensor, labels: torch.Tensor):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        return logits, loss, labels

    def _join_with_no_images(self) -> None:
        """A DDP step on a rank whose whole batch was unreadable: a forward and backward on two
        blank images with a zero loss, so that the rank joins the gradient all-reduce (the
        others would wait for it forever) and adds nothing to it; BatchNorm statistics are
        left as they were."""
        blank = torch.zeros(2, 3, self.pre.crop, self.pre.crop, device=self.device).to(
            memory_format=self.memory_format)
        with _batchnorm_stats_kept(self.net):
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                loss = self.model(blank).float().sum() * 0.0
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def train_epoch(self, epoch: int, start: int = 0) -> dict:
        """Train ``epoch`` from step ``start`` (0, or where a resumed job stopped, with the
        running sums it restored) to its end.

        Raises:
            _Stop: every rank agreed to stop (after a whole step).
            TrainingError: a non-finite loss, or no readable image in the channel.
        """
        frozen = bool(self.backbone) and epoch < self.hp["freeze-epochs"]
        trainable = model_lib.set_backbone_frozen(self.net, self.backbone, frozen)
        self.model.train()
        if frozen:
            model_lib.freeze_batchnorm_stats(self.net)
        if start == 0:
            self.acc = _new_accumulators()
        self.epoch, self.step = epoch, start
        self.debugger.mode(train=True)
        batches = self.debugger.steps(self._batches("train", epoch, start=start), epoch)
        acc = self.acc
        start = time.perf_counter()
        for images, labels, n_skipped in batches:
            acc["skipped"] += n_skipped
            if images.numel() == 0 and self.d.enabled:
                self._join_with_no_images()
            elif images.numel() > 0:
                self.debugger.step_begin()
                logits, loss, labels = self._forward(images, labels)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the training loss became {loss_value} at epoch {epoch + 1} step "
                        f"{self.step}; lower lr (now {self.hp['lr']}) or check the data; the "
                        f"last checkpoint (after epoch {len(self.history)}) is kept"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = labels.shape[0]
                self.debugger.step_end(n)  # loss.item() above synchronised the step
                acc["loss_sum"] += loss_value * n
                acc["correct"] += int((logits.argmax(1) == labels).sum())
                acc["seen"] += n
            self.step += 1
            if self._stop_agreed():
                acc["seconds"] += time.perf_counter() - start
                self.debugger.epoch_end()
                raise _Stop("train")
        acc["seconds"] += time.perf_counter() - start
        self.debugger.epoch_end()
        loss_sum, correct, seen, skipped = _reduce(
            [acc["loss_sum"], acc["correct"], acc["seen"], acc["skipped"]], self.d, self.device)
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

    @torch.no_grad()
    def evaluate(self, split: str, confusion: bool = False
                 ) -> tuple[dict, outputs.Confusion | None]:
        """Loss, top-1 and top-5 accuracy on ``split`` (summed over ranks); optionally the
        confusion matrix (kept sparse: memory grows with the images, not the classes squared).

        Raises:
            _Stop: every rank agreed to stop (the pass is abandoned).
            TrainingError: no readable image in the channel.
        """
        self.model.eval()
        self.debugger.mode(train=False)
        batches = self._batches(split)
        c = len(self.classes)
        pairs: list[torch.Tensor] = []
        loss_sum, correct, top5, seen = 0.0, 0, 0, 0
        for images, labels, _ in batches:
            if images.numel() > 0:
                logits, loss, labels = self._forward(images, labels)
                n = labels.shape[0]
                loss_sum += loss.item() * n
                pred = logits.argmax(1)
                correct += int((pred == labels).sum())
                k = min(5, c)
                top5 += int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
                seen += n
                if confusion:
                    pairs.append(torch.stack([labels.cpu(), pred.cpu()]))
            if self._stop_agreed():
                raise _Stop(split)
        loss_sum, correct, top5, seen = _reduce([loss_sum, correct, top5, seen], self.d,
                                                self.device)
        matrix = None
        if confusion:
            mine = torch.cat(pairs, dim=1) if pairs else torch.zeros(2, 0, dtype=torch.int64)
            if self.d.enabled:
                gathered: list = [None] * self.d.world_size
                dist.all_gather_object(gathered, mine)
                mine = torch.cat(gathered, dim=1)
            matrix = outputs.Confusion.from_pairs(mine[0].numpy(), mine[1].numpy(), c)
        if seen == 0:
            raise TrainingError(f"no readable image in the {split} channel")
        result = {f"{split}_loss": loss_sum / seen, f"{split}_accuracy": correct / seen,
                  f"{split}_top5_accuracy": top5 / seen}
        return result, matrix

    def start_workers(self) -> None:
        """Fork every loader's DataLoader workers now (the constructor calls this, after
        ``resume()``), freezing the objects built so far first; each split's first epoch reads the
        iterator started here, with the batches it has prefetched.

        A DataLoader forks its workers on its first ``iter()``. Forked after training steps have
        grown this process's heap, every heap page the next training step writes is copied on
        write, once, and that step runs about 3x slower (benchmarks/README.md). ``gc.freeze()``
        before the fork is the Python docs' advice for fork-without-exec (the collector stops
        writing to the frozen objects' pages); it also stops every later full collection from
        walking the hundreds of thousands of objects of torch, torchvision and the model.
        """
        self._set_position("train", self.epoch, self.step)
        gc.freeze()  # train.loop unfreezes at exit
        for split, loader in self.loaders.items():
            if loader.num_workers > 0:
                self._first_pass[split] = iter(loader)

    def _set_position(self, split: str, epoch: int, step: int = 0) -> None:
        self.loaders[split].sampler.set_epoch(epoch, step * self.hp["batch-size"])

    def _batches(self, split: str, epoch: int = 0, start: int = 0):
        """What a pass over ``split`` iterates: the iterator start_workers() started, the first
        time; then the DataLoader itself, its sampler set to ``epoch`` from step ``start``."""
        first = self._first_pass.pop(split, None)
        if first is not None:
            return first
        self._set_position(split, epoch, start)
        return self.loaders[split]

    def fit(self) -> None:
        """Train the epochs left, validating and checkpointing after each.

        Raises:
            _Stop: every rank agreed to stop.
            TrainingError: a non-finite loss, or no readable image.
        """
        hp = self.hp
        patience = hp["early-stopping-patience"]
        self.debugger.start(self.planned_steps())
        if len(self.history) < hp["epochs"] and self._stop_agreed():
            raise _Stop("train")  # asked to stop before the first step
        for epoch in range(self.epoch, hp["epochs"]):
            self.epoch = epoch
            lr = self.optimizer.param_groups[0]["lr"]
            row = {"epoch": epoch + 1}
            row.update(self.train_epoch(epoch, start=self.step))
            valid, _ = self.evaluate("valid")
            row.update(valid)
            row["learning_rate"] = lr
            self.scheduler.step()
            self.history.append(row)
            self.epoch, self.step, self.acc = epoch + 1, 0, _new_accumulators()
            improved = row["valid_loss"] < self.best["valid_loss"]
            if improved:
                self.best = {"valid_loss": row["valid_loss"], "epoch": epoch + 1}
                self.best_state = {k: v.detach().cpu().clone()
                                   for k, v in self.net.state_dict().items()}
            if self.d.main:
                metrics.log_metrics({k: row[k] for k in metrics.EPOCH_METRICS if k in row})
                if self.skipped:
                    logger.warning("epoch %d skipped %d unreadable images", epoch + 1,
                                   self.skipped)
            self.save_checkpoint()
            if patience and epoch + 1 - self.best["epoch"] >= patience:
                logger.info("early stopping: no better valid_loss for %d epochs (best: epoch %d)",
                            patience, self.best["epoch"])
                break
            if epoch + 1 < hp["epochs"] and self._stop_agreed():
                raise _Stop("train")  # asked during the checkpoint write: nothing more to save

    def _summary(self, final: dict) -> dict:
        summary = dict(final)
        if self.history:
            summary.update({k: self.history[-1][k] for k in ("valid_loss", "valid_accuracy")})
        summary["best_epoch"] = self.best["epoch"]
        return summary

    def write_artifact(self, weights: dict, summary: dict, training: dict | None = None,
                       passes_on: str | None = None) -> Path:
        """Export ``weights`` (a state_dict of this arch) as a complete fp32 artifact; returns
        the manifest's path. With ``passes_on`` (a split), the post-training passes then add to
        it (train/post_training.py): an int8 program (with int8-calibration-images > 0), the
        serving precisions measured on that split, and the drift baseline. A pass that fails is
        logged and recorded; a stop ends them, and the manifest says which did not run.

        Raises:
            TrainingError: the artifact cannot be written (disk full, permissions).
        """
        plain = model_lib.build(self.hp["arch"], len(self.classes))
        plain.load_state_dict({k: v.cpu() for k, v in weights.items()})
        model_dir = Path(self.job.model_dir)
        passes = self._post_training_passes(plain, passes_on) if passes_on else {}
        off = ({"int8_calibration": "int8-calibration-images=0"}
               if passes_on and not self.hp["int8-calibration-images"] else {})
        self.post_training = post_training.plan(
            passes, off, f"stopped by {stop.signal_name()}" if stop.requested() else None)
        manifest = artifact.write(model_dir, plain, self.hp["arch"], self.classes, self.pre,
                                  self.job.job_name, summary, self.hp, training,
                                  {"post_training": self.post_training})
        logger.info("model artifact written: %s", model_dir)
        post_training.run(model_dir, self.post_training, passes)
        return manifest

    def _post_training_passes(self, plain: nn.Module, split: str) -> dict:
        """The post-training passes over the artifact of ``plain`` (train/post_training.py),
        name -> pass; each iterates its batches through ``stop.checked``."""
        program = Path(self.job.model_dir) / artifact.PROGRAM
        int8_program: Path | None = None

        def int8_calibration() -> tuple[dict, dict]:
            nonlocal int8_program
            batches = quantize.calibration_batches(
                self._calibration_dataset(), self.hp["int8-calibration-images"],
                self.hp["batch-size"])
            path = quantize.write(program.parent, quantize.quantize(
                plain, stop.checked(batches), self.pre.crop, artifact.MAX_BATCH))
            int8_program = path
            return {}, {"program": path.name, "program_sha256": file_sha256(path)}

        def precisions() -> tuple[dict, dict]:
            return {"precisions": precision.evaluate(
                program, stop.checked(self._unsharded(split)), self.device, split,
                {"int8": int8_program} if int8_program else None)}, {}

        def drift_baseline() -> tuple[dict, dict]:
            predictions, confidences = baseline.valid_outputs(
                program, stop.checked(self._unsharded("valid")), self.device)
            return {"baseline": baseline.compute(
                predictions, confidences, len(self.classes),
                [path for path, _ in self.datasets["train"].samples],
                Geometry(self.pre.resize, self.pre.crop), self.hp["seed"])}, {}

        passes = {"int8_calibration": int8_calibration, "precisions": precisions,
                  "baseline": drift_baseline}
        if not self.hp["int8-calibration-images"]:
            del passes["int8_calibration"]
        return passes

    def _calibration_dataset(self) -> data.ChannelDataset:
        """The train channel's photos under the evaluation transform and decoding (no
        augmentation): the images the int8 program's activation ranges are calibrated on."""
        ds = copy.copy(self.datasets["train"])  # the same samples, not a second folder scan
        ds.transform = self.pre.eval_transform()
        ds.loader = functools.partial(data.load_rgb, draft=self.pre.resize)
        return ds

    def _unsharded(self, split: str):
        """A loader over the whole ``split`` (in DDP each rank's own loader holds a shard)."""
        if not self.d.enabled:
            self._set_position(split, 0)
            return self.loaders[split]
        return data.make_loader(self.datasets[split], self.hp["batch-size"], False, 0,
                                self.hp["seed"], 0, 1, self.cuda)

    def finish(self) -> None:
        """Evaluate the best weights on test (or valid), log the final line, and on rank 0 write
        the artifact, then its post-training passes (unless a stop came first: it ends them) and
        the reports (a failure in a pass or a report is logged; the job keeps its model).

        Raises:
            _Stop: every rank agreed to stop during the final evaluation.
        """
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        split = "test" if "test" in self.loaders else "valid"
        final, matrix = self.evaluate(split, confusion=True)
        if split == "test" and self.d.main:
            metrics.log_metrics(final)
        self.debugger.close()
        if not self.d.main:
            return
        self.write_artifact(self.net.state_dict(), self._summary(final),
                            {"complete": True, "epochs": self.hp["epochs"],
                             "epochs_completed": len(self.history),
                             "weights_from": f"epoch {self.best['epoch']}"},
                            passes_on=None if stop.requested() else split)
        self.artifact_written = True
        if stop.requested():
            return  # run() reports the stop; the reports are what a stop may skip
        try:
            labels = [data.readable_label(c) for c in self.classes]
            outputs.write(Path(self.job.output_data_dir), self.history, final, labels, matrix,
                          split)
        except Exception:  # noqa: BLE001 - the model is written: keep the job, say what is missing
            logger.exception("metrics.json and the plots not written")
        try:
            self.debugger.report(self.history)
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
    except _Stop as stopped:
        trainer.stop_job(stopped.phase)
    except TrainingError:
        # A failing job (a NaN loss) is when the rules matter most: report, then fail.
        try:
            trainer.debugger.report(trainer.history)
        except Exception:  # noqa: BLE001 - the job's own failure is the one to report
            logger.exception("could not write the debugger report")
        raise
    if stop.requested():
        trainer.stop_job("finish")
