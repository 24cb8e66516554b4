"""Hyperparameters arrive as strings (or the toolkit's json.loads of them) and are typed here."""

import pytest

from train import hyperparameters
from train.errors import TrainingError


def test_defaults_fill_every_name():
    values = hyperparameters.parse({})
    assert values["arch"] == "resnet50"
    assert values["epochs"] == 10 and values["amp"] is True and values["pretrained"] is True
    assert set(values) == set(hyperparameters.names())


@pytest.mark.parametrize(
    "raw, key, expected",
    [
        ({"lr": "0.001"}, "lr", 0.001),
        ({"lr": 1e-4}, "lr", 1e-4),
        ({"epochs": "3"}, "epochs", 3),
        ({"epochs": 3.0}, "epochs", 3),
        ({"batch-size": 16}, "batch-size", 16),
        ({"amp": "False"}, "amp", False),  # the generic Estimator sends str(False)
        ({"amp": False}, "amp", False),  # the toolkit json.loads "false"
        ({"pretrained": "true"}, "pretrained", True),
        ({"arch": "resnet18"}, "arch", "resnet18"),
        ({"label-smoothing": "0"}, "label-smoothing", 0.0),
    ],
)
def test_values_are_coerced(raw, key, expected):
    value = hyperparameters.parse(raw)[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"lr": "fast"}, ["'lr'", "'fast'", "a number > 0"]),
        ({"lr": "0"}, ["'lr'", "a number > 0"]),
        ({"lr": "nan"}, ["'lr'"]),
        ({"epochs": "2.5"}, ["'epochs'", "integer"]),
        ({"epochs": "0"}, ["'epochs'", "from 1"]),
        ({"momentum": "1"}, ["'momentum'", "[0, 1)"]),
        ({"amp": "maybe"}, ["'amp'", "true or false"]),
        ({"arch": "resnet51"}, ["'arch'", "torchvision classification model"]),
        ({"batch-size": True}, ["'batch-size'"]),
        ({"profiler-steps": "-1"}, ["'profiler-steps'", "from 0 to 100", "0: no trace"]),
        ({"profiler-steps": "101"}, ["'profiler-steps'", "from 0 to 100"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_accepted(raw, words):
    with pytest.raises(TrainingError) as info:
        hyperparameters.parse(raw)
    for word in words:
        assert word in str(info.value)


def test_unknown_key_lists_the_accepted_names():
    with pytest.raises(TrainingError) as info:
        hyperparameters.parse({"learning-rate": "0.1"})
    message = str(info.value)
    assert "'learning-rate'" in message and "lr" in message and "batch-size" in message


def test_platform_keys_are_ignored():
    values = hyperparameters.parse({"_tuning_objective_metric": "valid_accuracy",
                                    "sagemaker_estimator_class_name": "Estimator"})
    assert "_tuning_objective_metric" not in values
