"""The metric-line format and the regexes deploy.py hands to SageMaker."""

import io
import re

import pytest

from train import metrics


def test_line_round_trips_through_every_regex():
    values = {"epoch": 3, "train_loss": 0.812, "train_accuracy": 0.7, "valid_loss": 0.905,
              "valid_accuracy": 0.7712, "valid_top5_accuracy": 0.95, "learning_rate": 0.01,
              "images_per_second": 41.3, "epoch_seconds": 12.5}
    stream = io.StringIO()
    line = metrics.log_metrics(values, stream)
    assert stream.getvalue() == line + "\n"
    for definition in metrics.METRIC_DEFINITIONS:
        match = re.search(definition["Regex"], line)
        if definition["Name"] in values:
            assert match, definition
            assert float(match.group(1)) == pytest.approx(values[definition["Name"]], rel=1e-5)
        else:
            assert match is None, definition


def test_names_do_not_match_inside_other_names():
    line = metrics.format_metrics({"test_accuracy": 0.5, "valid_accuracy": 0.25})
    regex = dict((d["Name"], d["Regex"]) for d in metrics.METRIC_DEFINITIONS)
    assert float(re.search(regex["valid_accuracy"], line).group(1)) == 0.25
    assert float(re.search(regex["test_accuracy"], line).group(1)) == 0.5


def test_nan_is_reported_and_matched():
    line = metrics.format_metrics({"train_loss": float("nan")})
    assert line == "train_loss=nan"
    regex = dict((d["Name"], d["Regex"]) for d in metrics.METRIC_DEFINITIONS)
    assert re.search(regex["train_loss"], line).group(1) == "nan"


def test_unknown_names_are_refused_and_limit_holds():
    with pytest.raises(ValueError):
        metrics.format_metrics({"accuracy": 1.0})
    assert len(metrics.METRIC_DEFINITIONS) <= 20
