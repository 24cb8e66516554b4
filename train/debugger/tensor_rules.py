"""The four tensor rules, as smdebug ``Rule`` subclasses over the trial the hook wrote.

After the AWS documentation of SageMaker Debugger's built-in rules of the same names ("List of
Debugger built-in rules"); the open-source smdebug 1.0.34 ships only the ``Rule`` base class.
Being smdebug rules, an account that still has the managed service can run them as custom
rules. Importing this module imports smdebug (train/debugger/rules.py imports it when a trial
is evaluated).
"""

from __future__ import annotations

import math

import numpy as np

from train.debugger.hook import import_smdebug

import_smdebug()  # its log level set and pandas deferred, before any other smdebug import
from smdebug.core.modes import ModeKeys  # noqa: E402
from smdebug.exceptions import ShapeUnavailableForStep  # noqa: E402
from smdebug.rules.rule import Rule  # noqa: E402


def where(trial, step) -> str:
    """``step`` (smdebug's global step, counting eval steps too) as the user sees it:
    "train step 20" (the step-time histogram's numbering) or "eval step 3"."""
    mode, mode_step = trial.mode_modestep(step)
    return f"{mode.name.lower()} step {mode_step}" if mode is not None else f"step {step}"


def reduction(tensor, step, name, abs_=False) -> float:
    """One reduction of ``tensor`` at ``step`` as a float: the saved one when the hook saved
    reductions (ours does), else smdebug computes it from the saved tensor."""
    return float(tensor.reduction_value(step, name, abs=abs_))


class VanishingGradient(Rule):
    """Triggers when the mean absolute value of any gradient tensor falls below
    ``threshold`` (AWS default 1e-7) at a step."""

    def __init__(self, base_trial, threshold: float = 1e-7):
        super().__init__(base_trial, action_str="")
        self.threshold = float(threshold)

    def invoke_at_step(self, step):
        for name in self.base_trial.tensor_names(collection="gradients"):
            tensor = self.base_trial.tensor(name)
            if step not in tensor.steps():
                continue
            if reduction(tensor, step, "mean", abs_=True) < self.threshold:
                self.detail = (f"mean |{name}| below {self.threshold:g} at "
                               f"{where(self.base_trial, step)}")
                return True
        return False


class ExplodingTensor(Rule):
    """Triggers when any saved loss, gradient or weight holds NaN or infinity. Read from one
    reduction per collection: NaN and infinity make a mean or a standard deviation
    non-finite, so the reductions the hook saves suffice."""

    CHECKS = {"losses": ("max", True), "gradients": ("mean", True), "weights": ("std", False)}

    def __init__(self, base_trial):
        super().__init__(base_trial, action_str="")

    def invoke_at_step(self, step):
        for collection, (red, abs_) in self.CHECKS.items():
            for name in self.base_trial.tensor_names(collection=collection):
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                if not math.isfinite(reduction(tensor, step, red, abs_=abs_)):
                    self.detail = f"{name} is not finite at {where(self.base_trial, step)}"
                    return True
        return False


class PoorWeightInitialization(Rule):
    """Triggers when, at the first saved step, a weight tensor of two or more dimensions is
    constant (standard deviation below ``std_threshold``), e.g. an all-zero layer.
    (One-dimensional weights are left out: BatchNorm starts at a constant 1 by design.)"""

    def __init__(self, base_trial, std_threshold: float = 1e-8):
        super().__init__(base_trial, action_str="")
        self.std_threshold = float(std_threshold)
        self._checked = False

    def invoke_at_step(self, step):
        if self._checked:
            return False
        for name in self.base_trial.tensor_names(collection="weights"):
            tensor = self.base_trial.tensor(name)
            if step not in tensor.steps():
                continue
            self._checked = True
            try:
                if len(tensor.shape(step)) < 2:
                    continue
            except ShapeUnavailableForStep:  # reductions saved without their shape
                continue
            std = reduction(tensor, step, "std")
            if std < self.std_threshold:
                self.detail = (f"{name} is constant (std {std:g}) at "
                               f"{where(self.base_trial, step)}")
                return True
        return False


class LossNotDecreasing(Rule):
    """Triggers when the training loss, averaged over windows of ``num_steps`` TRAIN steps,
    has not fallen by ``min_decrease`` (a fraction) below its first window after
    ``patience`` further windows, or when it is not finite.

    AWS's rule compares each window with the one before; on small batches that fires on
    noise alone, so this compares the best later window with the first.
    """

    def __init__(self, base_trial, num_steps: int = 10, patience: int = 2,
                 min_decrease: float = 0.02):
        super().__init__(base_trial, action_str="")
        self.num_steps, self.patience, self.min_decrease = num_steps, patience, min_decrease
        self._values: list[float] = []
        self._windows: list[float] = []
        self.evaluated = False

    def invoke_at_step(self, step):
        if self.base_trial.mode(step) != ModeKeys.TRAIN:
            return False
        names = self.base_trial.tensor_names(collection="losses")
        values = [
            float(self.base_trial.tensor(n).value(step))
            for n in names
            if step in self.base_trial.tensor(n).steps()
        ]
        if not values:
            return False
        loss = values[0]
        if not math.isfinite(loss):
            self.evaluated = True
            self.detail = f"training loss is {loss} at {where(self.base_trial, step)}"
            return True
        self._values.append(loss)
        if len(self._values) % self.num_steps:
            return False
        self._windows.append(float(np.mean(self._values[-self.num_steps :])))
        if len(self._windows) <= self.patience:
            return False
        self.evaluated = True
        first, best = self._windows[0], min(self._windows[1:])
        if best > first * (1.0 - self.min_decrease):
            self.detail = (
                f"best mean loss of a {self.num_steps}-step window {best:.4g} is not "
                f"{self.min_decrease:.0%} below the first window's {first:.4g} "
                f"({where(self.base_trial, step)})"
            )
            return True
        return False


RULES = (VanishingGradient, ExplodingTensor, PoorWeightInitialization, LossNotDecreasing)
