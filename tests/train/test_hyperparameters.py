"""Hyperparameters arrive as strings (or the toolkit's json.loads of them) and are typed here."""

import dataclasses
import json

import pytest

from train import hyperparameters
from train.errors import TrainingError


def test_defaults_fill_every_name():
    values = hyperparameters.parse({})
    assert values.arch == "resnet50"
    assert values.epochs == 10 and values.amp is True and values.pretrained is True
    assert set(values.as_dict()) == set(hyperparameters.names())


def test_every_spec_has_a_typed_field_and_every_field_a_spec():
    fields = {f.name: f.type for f in dataclasses.fields(hyperparameters.Hyperparameters)}
    specs = {hyperparameters.field_name(key): spec
             for key, spec in hyperparameters.SPECS.items()}
    assert set(fields) == set(specs), "SPECS and Hyperparameters' fields differ"
    # The annotation is the type of the default, which the spec's parser returns.
    assert {name: type(spec.default).__name__ for name, spec in specs.items()} == fields


def test_the_typed_values_are_validates_under_the_old_names():
    raw = {"batch-size": "16", "amp": "false", "lr": "0.05", "sagemaker_region": "x"}
    typed = hyperparameters.parse(raw)
    assert typed.batch_size == 16 and typed.amp is False and typed.lr == 0.05
    assert typed.as_dict() == hyperparameters.validate(raw)
    # In order and in JSON too: the manifest records as_dict() as it recorded validate's dict.
    assert json.dumps(typed.as_dict()) == json.dumps(hyperparameters.validate(raw))
    assert hyperparameters.Hyperparameters.from_dict(typed.as_dict()) == typed
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.lr = 1.0


def test_a_job_goes_to_a_ddp_rank_as_json_and_comes_back_typed():
    from train.job import Job

    job = Job(channels={"train": "/t"}, hyperparameters=hyperparameters.parse({"epochs": "2"}),
              model_dir="/m", output_data_dir="/o", checkpoint_dir="/c", input_config_dir="/i")
    sent = json.loads(json.dumps(job.as_dict()))
    assert sent["hyperparameters"]["epochs"] == 2 and "batch-size" in sent["hyperparameters"]
    assert Job.from_dict(sent) == job


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
    value = getattr(hyperparameters.parse(raw), hyperparameters.field_name(key))
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
    assert "_tuning_objective_metric" not in values.as_dict()


def test_the_schema_imports_nothing_heavy():
    """deploy.py validates with it on a workstation: no toolkit, no torch."""
    import subprocess
    import sys

    code = ("import sys, train.hyperparameters as h; h.validate({'lr': '0.1'});"
            "print(sorted(m.split('.')[0] for m in sys.modules"
            " if m.split('.')[0] in ('torch', 'torchvision', 'sagemaker_training', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_architectures_are_torchvisions():
    import torchvision

    assert list(hyperparameters.CLASSIFICATION_MODELS) == sorted(
        torchvision.models.list_models(module=torchvision.models))


def test_the_training_docs_table_is_the_schemas():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    start = readme.index("<!-- hyperparameters: generated by")
    table = readme[readme.index("\n", start) + 1:readme.index("<!-- end hyperparameters -->")]
    assert table.strip() == hyperparameters.markdown_table(), \
        "docs/training.md's hyperparameter table is stale: run python -m train.hyperparameters --markdown"


def test_validate_raises_a_plain_error_and_parse_the_jobs_error():
    with pytest.raises(hyperparameters.HyperparameterError, match="'lr' = 'fast'"):
        hyperparameters.validate({"lr": "fast"})
    with pytest.raises(TrainingError, match="'lr' = 'fast'"):
        hyperparameters.parse({"lr": "fast"})
