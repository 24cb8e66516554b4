"""The training job's hyperparameters: names, types, defaults and accepted values, in one place.

SageMaker writes every hyperparameter as a string (``hyperparameters.json``); the toolkit's
``Environment`` then applies ``json.loads`` to each, so "2" arrives as 2 and "false" as False,
while the SDK's generic Estimator sends Python's ``str(True)``, "True". Each value is coerced
here from whichever form it arrives in, and checked; a bad or unknown key ends the job with a
FailureReason naming the key and what is accepted.

Keys the platform adds are ignored: ``sagemaker_*`` (the toolkit strips them) and
``_tuning_objective_metric`` (HyperparameterTuner adds it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from train.errors import TrainingError

IGNORED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")


@dataclass(frozen=True)
class Spec:
    """One hyperparameter: its parser (raises ValueError), default, and the accepted values in
    words for error messages."""

    parse: Callable[[Any], Any]
    default: Any
    accepted: str
    help: str


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ValueError(v)


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(v)
        f = float(v)
        if not f.is_integer():
            raise ValueError(v)
        i = int(f)
        if i < lo or (hi is not None and i > hi):
            raise ValueError(v)
        return i

    return parse


def _float(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def parse(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(v)
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(v)
        if f < lo or (lo_open and f == lo):
            raise ValueError(v)
        if hi is not None and (f > hi or (hi_open and f == hi)):
            raise ValueError(v)
        return f

    return parse


def _arch(v: Any) -> str:
    name = str(v).strip()
    if name not in classification_models():
        raise ValueError(v)
    return name


def classification_models() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


SPECS: dict[str, Spec] = {
    "arch": Spec(_arch, "resnet50", "a torchvision classification model name, e.g. resnet50, "
                 "resnet18, efficientnet_b0, convnext_tiny", "model architecture"),
    "epochs": Spec(_int(1, 10_000), 10, "an integer from 1 to 10000", "passes over the train channel"),
    "batch-size": Spec(_int(1, 4096), 64, "an integer from 1 to 4096",
                       "images per step on each process (GPU or CPU)"),
    "lr": Spec(_float(0.0, 10.0, lo_open=True), 0.01, "a number > 0 and <= 10",
               "peak SGD learning rate (cosine schedule to 0)"),
    "momentum": Spec(_float(0.0, 1.0, hi_open=True), 0.9, "a number in [0, 1)", "SGD momentum"),
    "weight-decay": Spec(_float(0.0, 1.0), 1e-4, "a number in [0, 1]", "SGD weight decay (L2)"),
    "label-smoothing": Spec(_float(0.0, 1.0, hi_open=True), 0.1, "a number in [0, 1)",
                            "cross-entropy label smoothing"),
    "freeze-epochs": Spec(_int(0), 1, "an integer >= 0",
                          "first epochs that train only the new head (pretrained backbone frozen)"),
    "image-size": Spec(_int(16, 1024), 224, "an integer from 16 to 1024",
                       "side of the square crop fed to the model, pixels"),
    "min-crop-scale": Spec(_float(0.01, 1.0), 0.25, "a number in [0.01, 1]",
                           "smallest area share of RandomResizedCrop"),
    "num-workers": Spec(_int(-1, 64), -1, "an integer from -1 to 64 (-1: one per vCPU, at most 8)",
                        "DataLoader worker processes per training process"),
    "seed": Spec(_int(0, 2**31 - 1), 42, "an integer from 0 to 2147483647", "random seed"),
    "amp": Spec(_bool, True, "true or false", "mixed precision on CUDA (ignored on CPU)"),
    "early-stopping-patience": Spec(_int(0), 0, "an integer >= 0 (0: off)",
                                    "stop after this many epochs without a better valid_loss"),
    "max-images-per-class": Spec(_int(0), 0, "an integer >= 0 (0: all)",
                                 "cap per class and channel, for quick runs"),
    "pretrained": Spec(_bool, True, "true or false",
                       "start from ImageNet weights (pretrained channel or torchvision's cache)"),
    "debugger-rules": Spec(_bool, True, "true or false",
                           "evaluate the debugger and profiler rules in the container and write "
                           "output/data/report/ (false: no hook, no monitoring)"),
    "profiler-steps": Spec(_int(0, 100), 3, "an integer from 0 to 100 (0: no trace)",
                           "training steps in output/data/report/trace.json (torch.profiler): "
                           "the job's last ones (with debugger-rules=true)"),
    "processes-per-host": Spec(_int(0, 64), 0, "an integer from 0 to 64 (0: one per GPU, else 1)",
                               "training processes per host; more than one in all runs DDP"),
}


def names() -> list[str]:
    """The accepted hyperparameter names, sorted."""
    return sorted(SPECS)


def parse(raw: dict[str, Any]) -> dict[str, Any]:
    """Coerce and check ``raw`` (SageMaker's hyperparameters, strings or JSON-decoded values).

    Returns:
        Every hyperparameter name mapped to its typed value (defaults filled in).

    Raises:
        TrainingError: an unknown key (lists the accepted ones) or a bad value (names the key,
            the value and what is accepted).
    """
    values = {name: spec.default for name, spec in SPECS.items()}
    for key, value in raw.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        spec = SPECS.get(key)
        if spec is None:
            raise TrainingError(
                f"unknown hyperparameter {key!r}; accepted: {', '.join(names())}"
            )
        try:
            values[key] = spec.parse(value)
        except (TypeError, ValueError):
            raise TrainingError(
                f"hyperparameter {key!r} = {value!r} is not valid: expected {spec.accepted}"
            ) from None
    return values
