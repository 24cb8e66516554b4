"""The one place that fixes the format of the metric lines `train` prints.

SageMaker captures training metrics (for the console, CloudWatch and automatic model tuning) by
matching regular expressions against the job's stdout/stderr; it allows at most 20 metric
definitions per job (AWS doc: "Define metrics and environment variables", CreateTrainingJob
``AlgorithmSpecification.MetricDefinitions``; docs/platform.md). deploy.py imports
``METRIC_DEFINITIONS`` from here, so the printed lines and the regexes cannot drift apart.

Line format, one per epoch, flushed::

    epoch=3 train_loss=0.812 valid_loss=0.905 valid_accuracy=0.7712 images_per_second=41.3

and once at the end::

    test_loss=0.950 test_accuracy=0.7610 test_top5_accuracy=0.9400

This module imports nothing heavy (no torch) so that deploy.py can use it on a workstation.
"""

from __future__ import annotations

import math
import sys
from typing import Mapping, TextIO

# Every metric name `train` may print, in print order. The value regex accepts plain decimals,
# exponents, nan and inf, so a diverging run still reports (and a tuner sees the NaN).
NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"

EPOCH_METRICS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_accuracy",
    "valid_top5_accuracy",
    "learning_rate",
    "images_per_second",
    "epoch_seconds",
)
FINAL_METRICS = ("test_loss", "test_accuracy", "test_top5_accuracy")

# The objective names deploy.py offers to HyperparameterTuner, with the direction of each.
OBJECTIVES = {"valid_accuracy": "Maximize", "valid_loss": "Minimize"}


def metric_regex(name: str) -> str:
    """Return the regex that captures metric ``name`` from a metric line.

    The leading ``(?:^|\\s)`` keeps ``valid_loss`` from matching inside ``xvalid_loss`` and
    ``test_accuracy`` from matching ``valid_accuracy`` (names are whole words).
    """
    return r"(?:^|\s)" + name + "=" + NUMBER


# The MetricDefinitions list for Estimator(metric_definitions=...). "epoch" is a counter, not a
# metric worth a CloudWatch series, so it is left out; 11 definitions, under SageMaker's 20.
METRIC_DEFINITIONS = [
    {"Name": name, "Regex": metric_regex(name)}
    for name in EPOCH_METRICS + FINAL_METRICS
    if name != "epoch"
]
assert len(METRIC_DEFINITIONS) <= 20, "SageMaker allows at most 20 metric definitions"


def _format_value(value: float | int) -> str:
    if isinstance(value, bool):
        raise TypeError("metric values are numbers, not bools")
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def format_metrics(values: Mapping[str, float | int]) -> str:
    """Format ``values`` as one metric line: ``name=value`` pairs joined by single spaces.

    Args:
        values: metric name to number; names must be known (``EPOCH_METRICS``/``FINAL_METRICS``)
            or start with ``rule_`` (debugger rule outcomes).

    Raises:
        ValueError: an unknown name or one with whitespace or ``=`` in it.
    """
    known = set(EPOCH_METRICS) | set(FINAL_METRICS)
    parts = []
    for name, value in values.items():
        if name not in known and not name.startswith("rule_"):
            raise ValueError(f"unknown metric name {name!r}; add it to train/metrics.py")
        if any(c.isspace() or c == "=" for c in name):
            raise ValueError(f"metric name {name!r} must not contain whitespace or '='")
        parts.append(f"{name}={_format_value(value)}")
    return " ".join(parts)


def log_metrics(values: Mapping[str, float | int], stream: TextIO | None = None) -> str:
    """Print one metric line to ``stream`` (default stdout) and flush it at once.

    Flushing matters: Python buffers stdout when it is not a TTY (as in a SageMaker container),
    and a tuning job that never sees the line gets no objective value (docs/platform.md).

    Returns:
        The line printed, without the newline.
    """
    line = format_metrics(values)
    stream = stream or sys.stdout
    print(line, file=stream, flush=True)
    return line
