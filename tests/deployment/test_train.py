"""deploy.py train: the training job it starts (spot, checkpoints, channels, metric definitions
checked against a real train log), from given hyperparameters or a tuning job's best."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from botocore.stub import Stubber

from deployment import settings as deploy_settings
from deployment import training as deploy_training
from tests.conftest import FAST_HYPERPARAMETERS
from tests.deployment.conftest import (BUCKET, IMAGE, REGION, ROLE, TUNING_DESCRIPTION, channels,
                                       run)
from train import metrics


def test_train_sends_spot_checkpoints_channels_and_no_debugger(aws, capsys):
    code, out, err = run(capsys, "train", "--no-wait", "--job-name", "dogs-1", "--hp", "lr=0.02",
                         "--hp", "epochs=3", "--pretrained", f"s3://{BUCKET}/weights/r50.pth")
    assert code == 0, err
    req = aws.one("CreateTrainingJob")
    assert req["TrainingJobName"] == "dogs-1"
    assert req["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert req["AlgorithmSpecification"]["MetricDefinitions"] == metrics.METRIC_DEFINITIONS
    assert req["RoleArn"] == ROLE
    assert req["HyperParameters"] == {"lr": "0.02", "epochs": "3"}
    assert channels(req) == {s: f"s3://{BUCKET}/dog-breeds/data/{s}"
                             for s in ("train", "valid", "test")} | {
        "pretrained": f"s3://{BUCKET}/weights/r50.pth"}
    assert req["EnableManagedSpotTraining"] is True
    assert req["StoppingCondition"]["MaxWaitTimeInSeconds"] >= \
        req["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert req["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/dog-breeds/checkpoints/dogs-1"
    assert "DebugHookConfig" not in req and "DebugRuleConfigurations" not in req
    assert "ProfilerRuleConfigurations" not in req
    assert req.get("ProfilerConfig", {}).get("DisableProfiler", True) is True
    assert "started training job dogs-1" in out
    assert json.loads(deploy_settings.STATE_FILE.read_text())["training_job"] == "dogs-1"


def test_train_debugger_service_sends_hook_rules_and_profiler(aws, capsys):
    code, _, err = run(capsys, "train", "--no-wait", "--no-spot", "--job-name", "dogs-2",
                       "--debugger-service")
    assert code == 0, err
    req = aws.one("CreateTrainingJob")
    assert "EnableManagedSpotTraining" not in req or not req["EnableManagedSpotTraining"]
    assert "CheckpointConfig" not in req
    hook = req["DebugHookConfig"]
    assert {c["CollectionName"] for c in hook["CollectionConfigurations"]} == {
        "losses", "gradients", "weights"}
    rules = {r["RuleConfigurationName"] for r in req["DebugRuleConfigurations"]}
    assert {"LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient",
            "PoorWeightInitialization"} <= rules
    assert req["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert [r["RuleConfigurationName"] for r in req["ProfilerRuleConfigurations"]] \
        == ["ProfilerReport"]


def test_train_rejects_unknown_hyperparameter(aws, capsys):
    code, out, err = run(capsys, "train", "--no-wait", "--hp", "learning_rate=1")
    assert code == 1 and "unknown hyperparameter 'learning_rate'" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not aws.calls[("sagemaker", "CreateTrainingJob")]


def test_train_from_tuning_job_uses_best_hyperparameters(aws, capsys, monkeypatch):
    sm = boto3.client("sagemaker", region_name=REGION)
    stub = Stubber(sm)
    stub.add_response("describe_hyper_parameter_tuning_job", TUNING_DESCRIPTION)
    job = {k: v for k, v in TUNING_DESCRIPTION["BestTrainingJob"].items()
           if k in ("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingJobStatus")}
    job.update(ModelArtifacts={"S3ModelArtifacts": "s3://b/m.tar.gz"},
               SecondaryStatus="Completed",
               AlgorithmSpecification={"TrainingInputMode": "File"},
               ResourceConfig={"VolumeSizeInGB": 50}, StoppingCondition={},
               HyperParameters={"lr": '"0.01"', "batch-size": '"64"', "epochs": '"12"',
                                "arch": '"resnet50"', "_tuning_objective_metric": "valid_accuracy"})
    stub.add_response("describe_training_job", job, {"TrainingJobName": "dogs-tune-1-002-b"})
    stub.activate()
    real = deploy_training.best_hyperparameters
    monkeypatch.setattr(deploy_training, "best_hyperparameters",
                        lambda _sm, name: real(sm, name))
    code, out, err = run(capsys, "train", "--no-wait", "--tuning-job", "dogs-tune-1",
                         "--job-name", "dogs-best", "--hp", "epochs=20")
    assert code == 0, err
    assert aws.one("CreateTrainingJob")["HyperParameters"] == {
        "lr": "0.01", "batch-size": "64", "epochs": "20", "arch": "resnet50"}
    assert "the best job of dogs-tune-1" in out


@pytest.mark.model
def test_metric_regexes_match_a_real_train_log(trained_job):
    lines = trained_job.log.splitlines()
    found = {}
    for definition in metrics.METRIC_DEFINITIONS:
        values = [m.group(1) for line in lines
                  for m in [re.search(definition["Regex"], line)] if m]
        assert values, f"{definition['Name']} never matched the real train log"
        found[definition["Name"]] = [float(v) for v in values]
    epoch_lines = [line for line in lines if re.match(r"epoch=\d+ ", line)]
    assert len(found["valid_accuracy"]) == len(epoch_lines) == FAST_HYPERPARAMETERS["epochs"]
    assert found["valid_accuracy"][-1] > 0.5  # digits: learning, as the train tests show
    assert len(found["test_accuracy"]) == 1
    # names are whole words: the valid_* regexes never read the final test_* line
    (final,) = [line for line in lines if "test_accuracy=" in line]
    valid = {d["Name"]: d["Regex"] for d in metrics.METRIC_DEFINITIONS}["valid_accuracy"]
    assert re.search(valid, final) is None or "valid_accuracy=" in final


def test_train_on_a_gpu_warns_of_the_unknown_driver_and_refuses_a_v100(aws, capsys):
    code, out, err = run(capsys, "train", "--no-wait", "--job-name", "dogs-gpu")
    assert code == 0, err
    assert aws.one("CreateTrainingJob")["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    (warning,) = err.splitlines()
    assert warning.startswith("warning: ml.g5.xlarge: SageMaker does not say which NVIDIA "
                              "driver its training instances run")
    assert "build argument TORCH_CUDA, docs/platform.md" in warning
    code, _, err = run(capsys, "train", "--no-wait", "--instance-type", "ml.m5.xlarge")
    assert code == 0 and err == ""
    for verb in ("train", "tune"):
        code, _, err = run(capsys, verb, "--no-wait", "--instance-type", "ml.p3.8xlarge")
        assert code == 1 and err.startswith("error: ml.p3.8xlarge has NVIDIA V100 GPUs")
    assert len(aws.calls[("sagemaker", "CreateTrainingJob")]) == 2
    assert not aws.calls[("sagemaker", "CreateHyperParameterTuningJob")]


def test_train_prefers_instance_types_retries_and_checks_the_infrastructure(aws, capsys):
    code, out, err = run(capsys, "train", "--no-wait", "--no-spot", "--job-name", "dogs-2",
                         "--instance-types", "ml.g6.xlarge,ml.g5.xlarge", "--instance-count",
                         "2", "--retries", "3", "--infra-check")
    assert code == 0, err
    req = aws.one("CreateTrainingJob")
    resources = req["ResourceConfig"]
    assert "InstanceType" not in resources and "InstanceCount" not in resources
    assert resources["InstancePreferences"] == [
        {"InstanceType": "ml.g6.xlarge", "InstanceCount": 2},
        {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2}]
    assert req["RetryStrategy"] == {"MaximumRetryAttempts": 3}
    assert req["InfraCheckConfig"] == {"EnableInfraCheck": True}
    assert "EnableManagedSpotTraining" not in req
    assert "on the first of ml.g6.xlarge, ml.g5.xlarge with capacity" in out


@pytest.mark.parametrize("options, says", [
    (("--instance-types", "ml.g6.xlarge,ml.g5.xlarge"), "on-demand jobs only; add --no-spot"),
    (("--no-spot", "--instance-types", "ml.g6.xlarge,ml.c7g.xlarge"), "ml.c7g.xlarge"),
    (("--no-spot", "--instance-types", "ml.g6.xlarge,ml.g6.xlarge"), "up to 5 different"),
    (("--retries", "31"), "1-30 times"),
])
def test_training_preferences_are_refused_in_one_line_before_any_aws_call(aws, capsys, options,
                                                                          says):
    code, _, err = run(capsys, "train", "--no-wait", *options)
    assert code == 1 and says in err and err.count("\n") == 1, err
    assert not aws.calls[("sagemaker", "CreateTrainingJob")]


def test_train_attach_follows_a_started_job_to_its_model(aws, capsys, monkeypatch):
    import time

    # The SDK's logs_for_job sleeps 5 s before its first look (and LOG_POLL_S between looks);
    # moto's job is complete at once.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    code, out, err = run(capsys, "train", "--no-wait", "--job-name", "dogs-3")
    assert code == 0 and "follow it with: python deploy.py train --attach dogs-3" in out, err
    code, out, err = run(capsys, "train", "--attach", "dogs-3")
    assert code == 0, err
    model = aws.calls[("sagemaker", "DescribeTrainingJob")][-1]["TrainingJobName"]
    assert model == "dogs-3" and "model: s3://" in out
    assert "deploy it with: python deploy.py deploy --training-job dogs-3" in out


def test_an_interrupted_train_says_the_job_keeps_running_and_how_to_follow_or_stop_it(
        aws, capsys, monkeypatch):
    from sagemaker.estimator import Estimator

    def fit(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Estimator, "fit", fit)
    code, _, err = run(capsys, "train", "--job-name", "dogs-4")
    assert code == 130
    assert "training job dogs-4, once started, keeps running in AWS" in err
    assert "python deploy.py train --attach dogs-4" in err
    assert "aws sagemaker stop-training-job --training-job-name dogs-4" in err
