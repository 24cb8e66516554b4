"""The training job's hyperparameters: names, types, defaults and accepted values, in one place.

SageMaker writes every hyperparameter as a string (``hyperparameters.json``); the toolkit's
``Environment`` then applies ``json.loads`` to each, so "2" arrives as 2 and "false" as False,
while the SDK's generic Estimator sends Python's ``str(True)``, "True". Each value is coerced
here from whichever form it arrives in, and checked; a bad or unknown key ends the job with a
FailureReason naming the key and what is accepted.

Keys the platform adds are ignored: ``sagemaker_*`` (the toolkit strips them) and
``_tuning_objective_metric`` (HyperparameterTuner adds it).

The one schema of the hyperparameters: the training job parses with it (``parse``, into the
typed ``Hyperparameters`` it reads by attribute), deploy.py checks ``--hp`` names and values with
it before any AWS call (``validate``), and docs/training.md's table is generated from it
(``python -m train.hyperparameters --markdown``; a test compares them). So it imports nothing
heavy: no toolkit, no torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

IGNORED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")


class HyperparameterError(ValueError):
    """A bad or unknown hyperparameter; the message names the key and what is accepted."""


@dataclass(frozen=True)
class Spec:
    """One hyperparameter: its parser (raises ValueError), default, the accepted values in
    words (for error messages and docs/training.md) and what it does (docs/training.md)."""

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


# torchvision 0.29's classification models (torchvision.models.list_models(module=
# torchvision.models)), kept here so that checking a name needs no torchvision; a test keeps the
# two equal.
CLASSIFICATION_MODELS = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m",
    "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mnasnet0_75",
    "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf",
    "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf",
    "resnet101", "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d",
    "resnext101_64x4d", "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b",
    "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13",
    "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14",
    "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def _arch(v: Any) -> str:
    name = str(v).strip()
    if name not in CLASSIFICATION_MODELS:
        raise ValueError(v)
    return name


SPECS: dict[str, Spec] = {
    "arch": Spec(_arch, "resnet50", "a torchvision classification model name, e.g. resnet50, "
                 "resnet18, efficientnet_b0, convnext_tiny", "model architecture"),
    "epochs": Spec(_int(1, 10_000), 10, "an integer from 1 to 10000", "passes over the train channel"),
    "batch-size": Spec(_int(1, 4096), 64, "an integer from 1 to 4096",
                       "images per step on each process (GPU or CPU)"),
    "lr": Spec(_float(0.0, 10.0, lo_open=True), 0.01, "a number > 0 and <= 10",
               "peak SGD learning rate (cosine schedule to 0)"),
    "momentum": Spec(_float(0.0, 1.0, hi_open=True), 0.9, "a number in [0, 1)",
                     "SGD momentum (Nesterov)"),
    "weight-decay": Spec(_float(0.0, 1.0), 1e-4, "a number in [0, 1]", "SGD weight decay (L2)"),
    "label-smoothing": Spec(_float(0.0, 1.0, hi_open=True), 0.1, "a number in [0, 1)",
                            "cross-entropy label smoothing"),
    "freeze-epochs": Spec(_int(0), 1, "an integer >= 0",
                          "first epochs that train only the new head (pretrained backbone frozen)"),
    "image-size": Spec(_int(16, 1024), 224, "an integer from 16 to 1024",
                       "side of the square crop fed to the model, pixels"),
    "min-crop-scale": Spec(_float(0.01, 1.0), 0.25, "a number in [0.01, 1]",
                           "smallest area share of RandomResizedCrop"),
    "num-workers": Spec(_int(-1, 64), -1,
                        "an integer from -1 to 64 (-1: on GPUs, the vCPUs per training process "
                        "less one, at most 32; on CPUs, one per vCPU, at most 8)",
                        "DataLoader worker processes per training process"),
    "seed": Spec(_int(0, 2**31 - 1), 42, "an integer from 0 to 2147483647", "random seed"),
    "amp": Spec(_bool, True, "true or false",
                "mixed precision on CUDA: bf16 where the GPU has it (compute capability 8.0 "
                "and later), else fp16 with loss scaling; ignored on CPU"),
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
    "int8-calibration-images": Spec(_int(0, 10_000), 256,
                                    "an integer from 0 to 10000 (0: no int8 program)",
                                    "train photos that calibrate the int8 program serve may run "
                                    "on CPUs (model-int8.pt2)"),
    "processes-per-host": Spec(_int(0, 64), 0, "an integer from 0 to 64 (0: one per GPU, else 1)",
                               "training processes per host; more than one in all runs DDP"),
}


@dataclass(frozen=True)
class Hyperparameters:
    """The job's hyperparameters, typed: one attribute per ``SPECS`` key, named as the key with
    '-' -> '_' (``batch-size`` is ``batch_size``); a test keeps the fields and ``SPECS`` equal."""

    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    freeze_epochs: int
    image_size: int
    min_crop_scale: float
    num_workers: int
    seed: int
    amp: bool
    early_stopping_patience: int
    max_images_per_class: int
    pretrained: bool
    debugger_rules: bool
    profiler_steps: int
    int8_calibration_images: int
    processes_per_host: int

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Hyperparameters:
        """From ``validate``'s result (or ``as_dict``'s): every ``SPECS`` key, typed.

        Raises:
            TypeError: a key that is not in ``SPECS``, or one missing.
        """
        return cls(**{field_name(key): value for key, value in values.items()})

    def as_dict(self) -> dict[str, Any]:
        """The values under the names users type, in ``SPECS``'s order: what ``validate``
        returns, and what the manifest records."""
        return {key: getattr(self, field_name(key)) for key in SPECS}


def field_name(key: str) -> str:
    """The ``Hyperparameters`` attribute of hyperparameter ``key``: "batch-size" -> "batch_size"."""
    return key.replace("-", "_")


def names() -> list[str]:
    """The accepted hyperparameter names, sorted."""
    return sorted(SPECS)


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Coerce and check ``raw`` (SageMaker's hyperparameters, strings or JSON-decoded values).

    Returns:
        Every hyperparameter name mapped to its typed value (defaults filled in).

    Raises:
        HyperparameterError: an unknown key (lists the accepted ones) or a bad value (names the
            key, the value and what is accepted).
    """
    values = {name: spec.default for name, spec in SPECS.items()}
    for key, value in raw.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        spec = SPECS.get(key)
        if spec is None:
            raise HyperparameterError(
                f"unknown hyperparameter {key!r}; accepted: {', '.join(names())}"
            )
        try:
            values[key] = spec.parse(value)
        except (TypeError, ValueError):
            raise HyperparameterError(
                f"hyperparameter {key!r} = {value!r} is not valid: expected {spec.accepted}"
            ) from None
    return values


def parse(raw: dict[str, Any]) -> Hyperparameters:
    """``validate`` for the training job, typed.

    Returns:
        Every hyperparameter (defaults filled in) as a ``Hyperparameters``.

    Raises:
        TrainingError: what ``validate`` raises, as the job's FailureReason.
    """
    try:
        return Hyperparameters.from_dict(validate(raw))
    except HyperparameterError as exc:
        from train.errors import TrainingError  # the toolkit's error type: only the job has it

        raise TrainingError(str(exc)) from None


def _cell(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """docs/training.md's hyperparameter table: name, default, accepted values, what it does."""
    rows = ["| name | default | accepted | what it does |", "|---|---|---|---|"]
    rows += [f"| `{name}` | `{_cell(spec.default)}` | {spec.accepted} | {spec.help} |"
             for name, spec in SPECS.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m train.hyperparameters --markdown")
    print(markdown_table())
