"""One training process: data, model, epochs, checkpoints, the final evaluation and the artifact.

Runs alone (one CPU or GPU) or as one rank of a DDP group started by torchrun (train/entry.py
decides). Rank 0 alone prints metric lines and writes checkpoints, the artifact and reports;
every rank computes, and metrics are summed across ranks before they are printed.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from train import artifact, checkpoint, data, debugger, metrics, model as model_lib, outputs
from train import monitor as monitor_lib, report, rules
from train.errors import TrainingError

logger = logging.getLogger(__name__)

# Trainer.start_workers() freezes the objects built before the workers fork (gc.freeze). Objects
# still frozen at exit are never collected, and nanobind (triton's bindings, which torch imports)
# then prints each of its own as a leak: 40 alarming lines per job. Unfreezing is harmless when
# nothing was frozen, so it is registered once, here.
atexit.register(gc.unfreeze)


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
                                   d.enabled, self.cuda)
            for name, ds in self.datasets.items()
        }
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
        self.start_epoch = 0
        self.best = {"valid_loss": math.inf, "epoch": -1}
        self.best_state: dict | None = None
        self.skipped = 0
        self.resume()
        # Before the hook: smdebug's import (0.1-0.2 s, train/debugger.py) runs while the workers
        # decode.
        self.start_workers()
        # Debugger and profiler rules in the container (train/rules.py): a local smdebug hook
        # when the job configured none, step timings, utilisation samples and a trace.
        self.rules = bool(hp["debugger-rules"])
        rules_dir = tempfile.mkdtemp(prefix="smdebug-") if self.rules else None
        if rules_dir:
            # The local hook's trial is ours to delete. Registered before the hook's own atexit
            # cleanup, so it runs after it (atexit is last in, first out): that cleanup writes
            # an end-of-training marker into the folder.
            atexit.register(shutil.rmtree, rules_dir, ignore_errors=True)
        # After resume(): the hook counts steps from 0 in every process, so it spreads its saves
        # over the steps this process will train, not the whole job's.
        self.hook = debugger.create_hook(job.input_config_dir, self.net, self.loss_fn, rules_dir,
                                         self.planned_steps())
        self.report_dir = Path(job.output_data_dir) / "report"
        self.monitor = monitor_lib.StepMonitor() if self.rules else None
        self.sampler = monitor_lib.SystemSampler() if self.rules and d.main else None
        self.trace = (monitor_lib.TraceWindow(self.report_dir / report.TRACE_JSON,
                                              active=hp["profiler-steps"], cuda=self.cuda)
                      if self.rules and d.main and hp["profiler-steps"] else None)

    def planned_steps(self) -> int:
        """Training steps this process will run if no epoch stops early: batches per epoch times
        the epochs left after the checkpoint it resumed from."""
        return len(self.loaders["train"]) * (self.hp["epochs"] - self.start_epoch)

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "epoch": len(self.history),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
            "best_state": self.best_state,
            "classes": self.classes,
            "arch": self.hp["arch"],
        }

    def resume(self) -> None:
        """Load the newest checkpoint in the job's checkpoint folder, if any (the constructor
        calls this).

        Raises:
            TrainingError: the checkpoint is for another arch or class list.
        """
        state = checkpoint.load_latest(Path(self.job.checkpoint_dir))
        if state is None:
            return
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
        self.start_epoch = int(state["epoch"])
        logger.info("resumed after epoch %d of %d", self.start_epoch, self.hp["epochs"])

    # ---------------------------------------------------------------- epochs
    def _forward(self, images: torch.Tensor, labels: torch.Tensor):
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        return logits, loss, labels

    def train_epoch(self, epoch: int) -> dict:
        frozen = bool(self.backbone) and epoch < self.hp["freeze-epochs"]
        trainable = model_lib.set_backbone_frozen(self.net, self.backbone, frozen)
        self.model.train()
        if frozen:
            model_lib.freeze_batchnorm_stats(self.net)
        batches = self._batches("train", epoch)
        debugger.set_mode(self.hook, train=True)
        loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
        start = time.perf_counter()
        if self.monitor is not None:
            batches = self.monitor.iterate(batches, epoch)
        for step, (images, labels, n_skipped) in enumerate(batches):
            skipped += n_skipped
            if images.numel() == 0:
                continue
            if self.trace is not None:
                self.trace.step_begin()
            logits, loss, labels = self._forward(images, labels)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"the training loss became {loss_value} at epoch {epoch + 1} step {step}; "
                    f"lower lr (now {self.hp['lr']}) or check the data; the last checkpoint "
                    f"(after epoch {len(self.history)}) is kept"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = labels.shape[0]
            if self.monitor is not None:
                self.monitor.step_end(n)  # loss.item() above synchronised the step
            loss_sum += loss_value * n
            correct += int((logits.argmax(1) == labels).sum())
            seen += n
        elapsed = time.perf_counter() - start
        if self.trace is not None:
            self.trace.close()  # a window ends with its epoch at the latest: no validation in it
        loss_sum, correct, seen, skipped = _reduce([loss_sum, correct, seen, skipped], self.d,
                                                   self.device)
        if seen == 0:
            raise TrainingError("no readable image in the train channel")
        logger.info("epoch %d: %s backbone, %d trainable parameters", epoch + 1,
                    "frozen" if frozen else "trainable", trainable)
        self.skipped = int(skipped)
        return {
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "images_per_second": seen / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
        }

    @torch.no_grad()
    def evaluate(self, split: str, confusion: bool = False) -> tuple[dict, np.ndarray | None]:
        """Loss, top-1 and top-5 accuracy on ``split`` (summed over ranks); optionally the
        confusion matrix int64 [C, C] (rows true)."""
        self.model.eval()
        debugger.set_mode(self.hook, train=False)
        batches = self._batches(split)
        c = len(self.classes)
        matrix = torch.zeros(c, c, dtype=torch.int64)
        loss_sum, correct, top5, seen = 0.0, 0, 0, 0
        for images, labels, _ in batches:
            if images.numel() == 0:
                continue
            logits, loss, labels = self._forward(images, labels)
            n = labels.shape[0]
            loss_sum += loss.item() * n
            pred = logits.argmax(1)
            correct += int((pred == labels).sum())
            k = min(5, c)
            top5 += int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
            seen += n
            if confusion:
                idx = labels.cpu() * c + pred.cpu()
                matrix += torch.bincount(idx, minlength=c * c).reshape(c, c)
        loss_sum, correct, top5, seen = _reduce([loss_sum, correct, top5, seen], self.d,
                                                self.device)
        if self.d.enabled and confusion:
            m = matrix.to(self.device)
            dist.all_reduce(m)
            matrix = m.cpu()
        if seen == 0:
            raise TrainingError(f"no readable image in the {split} channel")
        result = {f"{split}_loss": loss_sum / seen, f"{split}_accuracy": correct / seen,
                  f"{split}_top5_accuracy": top5 / seen}
        return result, (matrix.numpy() if confusion else None)

    def start_workers(self) -> None:
        """Fork every loader's DataLoader workers now (the constructor calls this, after
        ``resume()``), freezing the objects built so far first; each split's first epoch reads the
        iterator started here, with the batches it has prefetched.

        A DataLoader forks its workers on its first ``iter()``. Forked after training steps have
        grown this process's heap (about 1 GB for resnet18 at batch 16), every heap page the next
        training step writes is copied on write, once: the first training step after the first
        validation pass took 3.5-3.8 s instead of about 1.2 s, with 235 thousand minor page
        faults instead of 68 thousand (resnet18, batch 16, CPU), and a test pass after training
        paid the same. ``gc.freeze()`` before the fork is the Python docs' advice for
        fork-without-exec (the collector stops writing to the frozen objects' pages); it also
        stops every later full collection from walking the 360 thousand objects of torch,
        torchvision and the model: each took about 220 ms, 15-35 ms frozen.
        """
        if self.d.enabled:
            self.loaders["train"].sampler.set_epoch(self.start_epoch)
        gc.freeze()  # train.loop unfreezes at exit
        for split, loader in self.loaders.items():
            if loader.num_workers > 0:
                self._first_pass[split] = iter(loader)

    def _batches(self, split: str, epoch: int | None = None):
        """What an epoch of ``split`` iterates: the iterator start_workers() started, the first
        time; then the DataLoader itself (in DDP, the train sampler set to ``epoch`` first)."""
        first = self._first_pass.pop(split, None)
        if first is not None:
            return first
        loader = self.loaders[split]
        if split == "train" and self.d.enabled:
            loader.sampler.set_epoch(epoch)
        return loader

    def fit(self) -> None:
        hp = self.hp
        patience = hp["early-stopping-patience"]
        if self.sampler is not None:
            self.sampler.start()
        if self.trace is not None:  # the last steps this process will train (TraceWindow says why)
            self.trace.start = max(1, self.planned_steps() - self.trace.active)
        for epoch in range(self.start_epoch, hp["epochs"]):
            lr = self.optimizer.param_groups[0]["lr"]
            row = {"epoch": epoch + 1}
            row.update(self.train_epoch(epoch))
            valid, _ = self.evaluate("valid")
            row.update(valid)
            row["learning_rate"] = lr
            self.scheduler.step()
            self.history.append(row)
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
                checkpoint.save(Path(self.job.checkpoint_dir), epoch + 1, self.state())
            if patience and epoch + 1 - self.best["epoch"] >= patience:
                logger.info("early stopping: no better valid_loss for %d epochs (best: epoch %d)",
                            patience, self.best["epoch"])
                break

    def finish(self) -> None:
        """Evaluate the best weights on test (or valid), log the final line, and on rank 0 write
        the reports and the artifact."""
        if self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        split = "test" if "test" in self.loaders else "valid"
        final, matrix = self.evaluate(split, confusion=True)
        if split == "test" and self.d.main:
            metrics.log_metrics(final)
        if self.hook is not None:
            self.hook.close()
        if not self.d.main:
            return
        pending = self.start_report() if self.rules else None
        try:
            labels = [data.readable_label(c) for c in self.classes]
            outputs.write(Path(self.job.output_data_dir), self.history, final, labels, matrix,
                          split)
            plain = model_lib.build(self.hp["arch"], len(self.classes))
            plain.load_state_dict({k: v.cpu() for k, v in self.net.state_dict().items()})
            summary = dict(final)
            if self.history:
                summary.update({k: self.history[-1][k] for k in ("valid_loss", "valid_accuracy")})
            summary["best_epoch"] = self.best["epoch"]
            manifest = artifact.write(Path(self.job.model_dir), plain, self.hp["arch"],
                                      self.classes, self.pre, self.job.job_name, summary, self.hp)
            logger.info("model artifact written: %s", manifest.parent)
        finally:
            if pending is not None:
                try:
                    self.finish_report(pending)
                except RuntimeError as exc:  # the model is good: keep the job, say what is missing
                    logger.error("debugger report not written: %s", exc)

    def start_report(self) -> report.ReportProcess:
        """Stop the monitors, evaluate every rule, log one ``rule_<Name>=0|1`` metric line and the
        rules that fired, and start writing report.html and summary.json in a child process
        (train.report.ReportProcess). The hook must be closed."""
        self.sampler.stop()
        if self.trace is not None:
            self.trace.close()
        results = rules.evaluate_all(self.hook.out_dir if self.hook else None, self.history,
                                     self.monitor.steps, self.sampler.samples)
        metrics.log_metrics({f"rule_{r.name}": int(r.status == rules.TRIGGERED)
                             for r in results if r.status != rules.NO_DATA})
        fired = [r.name for r in results if r.status == rules.TRIGGERED]
        logger.info("debugger rules: %s", ", ".join(fired) or "none triggered")
        return report.ReportProcess(self.report_dir, results, self.history, self.monitor.steps,
                                    self.sampler.samples, self.job.job_name,
                                    self.trace is not None and self.trace.written)

    @staticmethod
    def finish_report(pending: report.ReportProcess) -> None:
        """Wait for the report.

        Raises:
            RuntimeError: the report process failed.
        """
        logger.info("debugger report written: %s", pending.wait())


def run(job: Job, d: Dist | None = None) -> None:
    """Train, evaluate and write the artifact.

    Raises:
        TrainingError: bad input or environment (the message is the job's FailureReason).
    """
    d = d or Dist()
    trainer = Trainer(job, d)  # resumes from the newest checkpoint
    try:
        trainer.fit()
    except TrainingError:
        # A failing job (a NaN loss) is when the rules matter most: report, then fail.
        if trainer.rules and d.main:
            try:
                if trainer.hook is not None:
                    trainer.hook.close()
                trainer.finish_report(trainer.start_report())
            except Exception:  # noqa: BLE001 - the job's own failure is the one to report
                logger.exception("could not write the debugger report")
        raise
    trainer.finish()
