"""Debugger and profiler rules evaluated inside the container, after training.

SageMaker Debugger's managed service ran built-in rules (VanishingGradient, Overfit, Overtraining,
LossNotDecreasing, PoorWeightInitialization) and the profiler report's rules (StepOutlier,
LowGPUUtilization, BatchSize, GPUMemoryIncrease, Dataloader, CPUBottleneck) in separate
processing jobs. That service closed to new customers on 2026-07-30, and the open-source smdebug
1.0.34 ships only the ``Rule`` base class, not the built-in rules themselves (checked: there is no
``smdebug.rules.generic``). So they are written here, after the AWS documentation of each rule
("List of Debugger built-in rules", "Debugger profiling report"), with these differences, which
the report states:

- Tensor rules (VanishingGradient, ExplodingTensor, PoorWeightInitialization, LossNotDecreasing)
  are smdebug ``Rule`` subclasses run on the smdebug trial our hook writes, so an account that
  still has the service can run the same classes as custom rules.
- PoorWeightInitialization looks at the saved weights at the first step (constant or all-zero
  layers) instead of activation variances, which we do not save (they cost too much to write).
- Overfit and Overtraining work on the per-epoch train/valid loss history instead of per step.
- The profiler rules work on our own step timings and utilisation samples (monitor.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np


TRIGGERED, OK, NO_DATA = "triggered", "ok", "no data"
# smdebug.core.config_constants.TRAINING_END_DELAY_REFRESH_KEY (seconds, default 1)
TRAINING_END_DELAY_REFRESH = "SMDEBUG_TRAINING_END_DELAY_REFRESH"


@dataclass
class RuleResult:
    """The outcome of one rule: ``status`` is ``triggered``, ``ok`` or ``no data``; ``step`` is
    where it first triggered: for tensor rules the step within its mode (``detail`` says "train
    step 20" or "eval step 3"; train steps count from 0 across epochs, as the step-time histogram
    does), for system rules the training step, for epoch rules the epoch."""

    name: str
    kind: str  # "tensor", "training" or "system"
    status: str
    step: int | None
    detail: str
    advice: str
    parameters: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


ADVICE = {
    "VanishingGradient": "Gradients are near zero: check the initialisation (no zero or constant "
    "weights), raise the learning rate, or unfreeze the backbone sooner.",
    "ExplodingTensor": "NaN or infinite values: lower the learning rate, keep AMP's gradient "
    "scaler on, and check the input data for NaN.",
    "PoorWeightInitialization": "Some layers start constant or all-zero: use the pretrained weights "
    "or torchvision's default initialisation.",
    "LossNotDecreasing": "The training loss does not go down: lower the learning rate (the usual "
    "cause) or check that the labels match the images.",
    "Overfit": "Validation loss is far above training loss: add data or augmentation, raise "
    "weight-decay or label-smoothing, or train fewer epochs.",
    "Overtraining": "Validation loss stopped improving while training loss kept falling: set "
    "early-stopping-patience or fewer epochs.",
    "StepOutlier": "Some steps take far longer than the rest: look for I/O stalls, checkpoint "
    "writes inside the step, or a noisy neighbour; the trace shows where the time goes.",
    "Dataloader": "Training waits on data loading: raise num-workers, use a smaller image-size "
    "for decoding, or put the data on faster storage.",
    "CPUBottleneck": "The CPU is saturated while the GPU idles: raise num-workers only if cores "
    "are free, otherwise preprocess less per image or use an instance with more vCPUs.",
    "LowGPUUtilization": "The GPU is mostly idle: raise batch-size, raise num-workers, or use a "
    "smaller instance.",
    "BatchSize": "GPU and its memory are under-used: a larger batch-size (with a scaled learning "
    "rate) or a smaller instance would cost less.",
    "GPUMemoryIncrease": "GPU memory grows during training: look for tensors kept across steps "
    "(a loss kept without .item()), or growing caches.",
}


def evaluate_trial(trial_dir: str) -> list[RuleResult]:
    """Run the tensor rules over the smdebug trial in ``trial_dir`` (all saved steps). Call it
    after the hook has closed (``hook.close()``): it reads the trial as complete.

    Returns one RuleResult per rule; ``no data`` when the trial holds no tensors a rule needs.
    """
    # The trial is read after the hook has closed, so every file is complete: smdebug's wait
    # for late writes after the end-of-training marker (1 s by default, meant for rules running
    # beside a live job) is pure cost here. Read at Trial creation.
    os.environ[TRAINING_END_DELAY_REFRESH] = "0"
    from smdebug.exceptions import RuleEvaluationConditionMet
    from smdebug.rules.rule_invoker import invoke_rule
    from smdebug.trials import create_trial

    trial = create_trial(str(trial_dir))
    steps = trial.steps()
    results = []
    needs = {
        "VanishingGradient": "gradients",
        "ExplodingTensor": "losses",
        "PoorWeightInitialization": "weights",
        "LossNotDecreasing": "losses",
    }
    from train.debugger.tensor_rules import RULES

    for cls in RULES:
        name = cls.__name__
        if not steps or not trial.tensor_names(collection=needs[name]):
            results.append(RuleResult(name, "tensor", NO_DATA, None,
                                      f"the trial saved no {needs[name]}", ADVICE[name]))
            continue
        rule = cls(trial)
        params = {k: v for k, v in vars(rule).items()
                  if isinstance(v, (int, float)) and not k.startswith("_")}
        try:
            invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1, raise_eval_cond=True)
        except RuleEvaluationConditionMet as met:
            mode_step = trial.mode_step(int(met.step))
            results.append(RuleResult(name, "tensor", TRIGGERED,
                                      int(met.step if mode_step is None else mode_step),
                                      getattr(rule, "detail", ""), ADVICE[name], params))
            continue
        if name == "LossNotDecreasing" and not rule.evaluated:
            results.append(RuleResult(name, "tensor", NO_DATA, None,
                                      "too few training steps for the windows", ADVICE[name],
                                      params))
        else:
            results.append(RuleResult(name, "tensor", OK, None, "", ADVICE[name], params))
    return results


# --------------------------------------------------------------------------------------------
# Training-curve rules on the per-epoch history.
# --------------------------------------------------------------------------------------------
def overfit(history: Sequence[dict], ratio_threshold: float = 0.25, patience: int = 2,
            start_epoch: int = 1) -> RuleResult:
    """Triggers when valid_loss exceeds train_loss by more than ``ratio_threshold`` (relative)
    for ``patience`` consecutive epochs from ``start_epoch`` on (AWS Overfit, per epoch)."""
    params = {"ratio_threshold": ratio_threshold, "patience": patience, "start_epoch": start_epoch}
    rows = [h for h in history if h.get("epoch", 0) >= start_epoch
            and "train_loss" in h and "valid_loss" in h]
    if len(rows) < patience:
        return RuleResult("Overfit", "training", NO_DATA, None,
                          f"needs {patience} epochs with both losses", ADVICE["Overfit"], params)
    run = 0
    for h in rows:
        gap = h["valid_loss"] / max(h["train_loss"], 1e-12) - 1.0
        run = run + 1 if gap > ratio_threshold else 0
        if run >= patience:
            return RuleResult("Overfit", "training", TRIGGERED, int(h["epoch"]),
                              f"valid_loss {h['valid_loss']:.4g} vs train_loss "
                              f"{h['train_loss']:.4g} at epoch {h['epoch']}",
                              ADVICE["Overfit"], params)
    return RuleResult("Overfit", "training", OK, None, "", ADVICE["Overfit"], params)


def overtraining(history: Sequence[dict], patience: int = 3, min_delta: float = 0.01
                 ) -> RuleResult:
    """Triggers when valid_loss has not improved by ``min_delta`` for ``patience`` epochs while
    train_loss kept falling (AWS Overtraining, per epoch)."""
    params = {"patience": patience, "min_delta": min_delta}
    rows = [h for h in history if "train_loss" in h and "valid_loss" in h]
    if len(rows) <= patience:
        return RuleResult("Overtraining", "training", NO_DATA, None,
                          f"needs more than {patience} epochs", ADVICE["Overtraining"], params)
    best_i = 0
    for i, h in enumerate(rows):
        if h["valid_loss"] < rows[best_i]["valid_loss"] - min_delta:
            best_i = i
        if i - best_i >= patience and h["train_loss"] < rows[best_i]["train_loss"] - min_delta:
            return RuleResult("Overtraining", "training", TRIGGERED, int(h["epoch"]),
                              f"best valid_loss {rows[best_i]['valid_loss']:.4g} at epoch "
                              f"{rows[best_i]['epoch']}; train_loss fell to "
                              f"{h['train_loss']:.4g} by epoch {h['epoch']}",
                              ADVICE["Overtraining"], params)
    return RuleResult("Overtraining", "training", OK, None, "", ADVICE["Overtraining"], params)


# --------------------------------------------------------------------------------------------
# System rules on step timings and utilisation samples.
# --------------------------------------------------------------------------------------------
def step_outlier(steps: Sequence, stddev: float = 3.0, n_outliers: int = 10) -> RuleResult:
    """Triggers when more than ``n_outliers`` steps take longer than mean + ``stddev`` standard
    deviations (AWS StepOutlier defaults: stddev 3, n_outliers 10). The first step of each epoch
    (DataLoader start-up) is left out."""
    params = {"stddev": stddev, "n_outliers": n_outliers}
    times = np.array([s.step_ms for s in steps if not s.first_of_epoch], dtype=np.float64)
    if times.size < 5:
        return RuleResult("StepOutlier", "system", NO_DATA, None, "fewer than 5 steps",
                          ADVICE["StepOutlier"], params)
    limit = times.mean() + stddev * times.std()
    outliers = [s for s in steps if not s.first_of_epoch and s.step_ms > limit]
    if len(outliers) > n_outliers:
        return RuleResult("StepOutlier", "system", TRIGGERED, outliers[0].step,
                          f"{len(outliers)} steps over {limit:.1f} ms (median "
                          f"{np.median(times):.1f} ms)", ADVICE["StepOutlier"], params)
    return RuleResult("StepOutlier", "system", OK, None,
                      f"{len(outliers)} steps over {limit:.1f} ms", ADVICE["StepOutlier"], params)


def step_outlier_limit_ms(steps: Sequence, stddev: float = 3.0) -> float | None:
    """The StepOutlier threshold in ms for ``steps`` (None with fewer than 5 steps)."""
    times = np.array([s.step_ms for s in steps if not s.first_of_epoch], dtype=np.float64)
    return float(times.mean() + stddev * times.std()) if times.size >= 5 else None


def dataloader(steps: Sequence, threshold: float = 0.25) -> RuleResult:
    """Triggers when the DataLoader wait is more than ``threshold`` of the step time, summed
    over steps (first steps of epochs left out). AWS's Dataloader rule counts worker processes;
    the wait itself is the direct measure of what it tries to predict."""
    params = {"threshold": threshold}
    rows = [s for s in steps if not s.first_of_epoch]
    total = sum(s.step_ms for s in rows)
    if not rows or total <= 0:
        return RuleResult("Dataloader", "system", NO_DATA, None, "no steps",
                          ADVICE["Dataloader"], params)
    share = sum(s.wait_ms for s in rows) / total
    first = next((s.step for s in rows if s.wait_ms > threshold * s.step_ms), None)
    status = TRIGGERED if share > threshold else OK
    return RuleResult("Dataloader", "system", status, first if status == TRIGGERED else None,
                      f"data wait is {share:.1%} of step time", ADVICE["Dataloader"], params)


def _gpu_rule(name: str, samples: Sequence, check: Callable[[np.ndarray, np.ndarray, np.ndarray,
                                                             np.ndarray], tuple[bool, str]],
              params: dict) -> RuleResult:
    gpu = [s for s in samples if s.gpu_percent]
    if len(gpu) < 3:
        return RuleResult(name, "system", NO_DATA, None, "no GPU seen through NVML", ADVICE[name],
                          params)
    util = np.array([np.mean(s.gpu_percent) for s in gpu])
    mem = np.array([np.sum(s.gpu_memory_bytes) / max(np.sum(s.gpu_memory_total_bytes), 1)
                    for s in gpu]) * 100.0
    cpu = np.array([s.cpu_percent for s in gpu])
    t = np.array([s.t_s for s in gpu])
    fired, detail = check(util, mem, cpu, t)
    return RuleResult(name, "system", TRIGGERED if fired else OK, None, detail, ADVICE[name],
                      params)


def system_rules(steps: Sequence, samples: Sequence) -> list[RuleResult]:
    """StepOutlier, Dataloader, and the GPU rules (``no data`` without a GPU): CPUBottleneck
    (CPU over 90 % while GPU under 10 % in more than half the samples), LowGPUUtilization (p95
    GPU utilisation under 70 %), BatchSize (p95 GPU utilisation and p95 GPU memory both under
    70 %), GPUMemoryIncrease (mean memory of the last quarter over the first quarter's by more
    than 5 points). Thresholds are AWS's profiler-rule defaults."""

    def cpu_bottleneck(util, mem, cpu, t):
        share = float(np.mean((cpu > 90) & (util < 10)))
        return share > 0.5, f"CPU over 90 % with GPU under 10 % in {share:.0%} of samples"

    def low_gpu(util, mem, cpu, t):
        p95 = float(np.percentile(util, 95))
        return p95 < 70, f"p95 GPU utilisation {p95:.0f} %"

    def batch_size(util, mem, cpu, t):
        pu, pm = float(np.percentile(util, 95)), float(np.percentile(mem, 95))
        return pu < 70 and pm < 70, f"p95 GPU utilisation {pu:.0f} %, p95 memory {pm:.0f} %"

    def memory_increase(util, mem, cpu, t):
        q = max(len(mem) // 4, 1)
        rise = float(np.mean(mem[-q:]) - np.mean(mem[:q]))
        return rise > 5, f"GPU memory rose {rise:.1f} points"

    return [
        step_outlier(steps),
        dataloader(steps),
        _gpu_rule("CPUBottleneck", samples, cpu_bottleneck, {"cpu_threshold": 90,
                                                             "gpu_threshold": 10}),
        _gpu_rule("LowGPUUtilization", samples, low_gpu, {"threshold_p95": 70}),
        _gpu_rule("BatchSize", samples, batch_size, {"gpu_threshold_p95": 70,
                                                     "gpu_memory_threshold_p95": 70}),
        _gpu_rule("GPUMemoryIncrease", samples, memory_increase, {"increase": 5}),
    ]


def evaluate_all(trial_dir: str | None, history: Sequence[dict], steps: Sequence,
                 samples: Sequence) -> list[RuleResult]:
    """Every rule, in report order: the tensor rules on the smdebug trial in ``trial_dir``
    (skipped when None), Overfit and Overtraining on the per-epoch ``history``, and the system
    rules on ``steps`` (monitor.StepRecord) and ``samples`` (monitor.SystemSample)."""
    results = evaluate_trial(trial_dir) if trial_dir else []
    results += [overfit(history), overtraining(history)]
    results += system_rules(steps, samples)
    return results
