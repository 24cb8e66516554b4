"""The running sums of training steps, read from the device a few steps at a time.

Reading a step's loss on the host (``loss.item()``) waits for every kernel queued before it: on
a GPU the host then stops queueing the next step's work until this one ends, and the device
idles while the host launches the next step's first kernels. So on a GPU each step's loss and
correct count stay on the device, and the host reads them every ``SYNC_EVERY_CUDA`` steps (and
before anything reads the sums: an epoch's end, a stop). On the CPU there is nothing to wait
for, and they are read every step. Either way the sums are those of the per-step reads (float64
sums of each step's float32 loss times its batch size), and the first non-finite loss is found
at its own step, whenever it is read.
"""

from __future__ import annotations

import math

import torch

from train.errors import TrainingError

SYNC_EVERY_CUDA = 25  # steps between reads on a GPU


class StepSums:
    """Training steps whose loss and correct count have not been read yet (``add``), folded into
    an epoch's running sums (``new_accumulators``' keys) by ``read``."""

    def __init__(self, cuda: bool):
        self.every = SYNC_EVERY_CUDA if cuda else 1
        self._steps: list[int] = []
        self._sizes: list[int] = []
        self._losses: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor,
            labels: torch.Tensor) -> None:
        """One training step (``step``: its index in the epoch): its mean loss (a 0-dim
        tensor), logits [N, classes] and labels int64 [N], all on the device. Nothing is
        read."""
        self._steps.append(step)
        self._sizes.append(labels.shape[0])
        self._losses.append(loss.detach().float())
        self._correct.append((logits.argmax(1) == labels).sum())

    @property
    def due(self) -> bool:
        """Whether the steps added since the last read should be read now."""
        return len(self._steps) >= self.every

    def read(self, acc: dict) -> tuple[int, float] | None:
        """Read the steps added since the last read (one transfer for all of them) and add
        them to ``acc``, in order, up to the first non-finite loss. Returns that step's index
        and loss, or None when every loss was finite."""
        if not self._steps:
            return None
        losses = torch.stack(self._losses).tolist()
        correct = torch.stack(self._correct).tolist()
        steps, sizes = self._steps, self._sizes
        self._steps, self._sizes, self._losses, self._correct = [], [], [], []
        for step, n, loss, right in zip(steps, sizes, losses, correct):
            if not math.isfinite(loss):
                return step, loss
            acc["loss_sum"] += loss * n
            acc["correct"] += int(right)
            acc["seen"] += n
        return None


def read_or_fail(sums: StepSums, acc: dict, epoch: int, lr: float, epochs_done: int) -> None:
    """``sums.read(acc)``, failing the job at a non-finite loss.

    Raises:
        TrainingError: a step's loss was not finite (the step is named, with the advice).
    """
    bad = sums.read(acc)
    if bad is not None:
        step, loss = bad
        raise TrainingError(
            f"the training loss became {loss} at epoch {epoch + 1} step {step}; lower lr (now "
            f"{lr}) or check the data; the last checkpoint (after epoch {epochs_done}) is kept")
