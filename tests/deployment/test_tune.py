"""deploy.py tune: the Bayesian tuning job it starts, and its results table."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from deployment.commands import tune
from tests.deployment.conftest import IMAGE, REGION, TUNING_DESCRIPTION, channels, run
from train import metrics


def test_tune_sends_bayesian_job_with_ranges_and_metrics(aws, capsys):
    code, out, err = run(capsys, "tune", "--no-wait", "--job-name", "dogs-tune-1",
                         "--max-jobs", "8", "--max-parallel-jobs", "2",
                         "--objective", "valid_loss", "--hp", "arch=resnet50")
    assert code == 0, err
    req = aws.one("CreateHyperParameterTuningJob")
    config = req["HyperParameterTuningJobConfig"]
    assert req["HyperParameterTuningJobName"] == "dogs-tune-1"
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 8
    assert config["ResourceLimits"]["MaxParallelTrainingJobs"] == 2
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize",
                                                          "MetricName": "valid_loss"}
    ranges = config["ParameterRanges"]
    cont = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    assert cont["lr"]["ScalingType"] == "Logarithmic"
    assert cont["weight-decay"]["ScalingType"] == "Logarithmic"
    assert "momentum" in cont
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size",
                                                     "Values": ["32", "64", "128"]}]
    assert ranges["IntegerParameterRanges"][0]["Name"] == "epochs"
    job = req["TrainingJobDefinition"]
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["AlgorithmSpecification"]["MetricDefinitions"] == metrics.METRIC_DEFINITIONS
    assert job["StaticHyperParameters"]["arch"] == "resnet50"
    assert not {"lr", "batch-size", "epochs"} & set(job["StaticHyperParameters"])
    assert job["EnableManagedSpotTraining"] is True
    assert set(channels(job)) == {"train", "valid", "test"}
    assert "started tuning job dogs-tune-1" in out


def test_tune_runs_each_job_on_the_first_preferred_type_with_capacity(aws, capsys):
    code, _, err = run(capsys, "tune", "--no-wait", "--instance-types",
                       "ml.g6e.xlarge,ml.g5.xlarge", "--retries", "2")
    assert code == 0, err
    definition = aws.one("CreateHyperParameterTuningJob")["TrainingJobDefinition"]
    assert definition["HyperParameterTuningResourceConfig"] == {
        "AllocationStrategy": "Prioritized", "InstanceConfigs": [
            {"InstanceType": "ml.g6e.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
            {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}]}
    assert "ResourceConfig" not in definition
    assert definition["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert definition["EnableManagedSpotTraining"] is True  # tuning's fallback allows spot


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "64,8192"], "--batch-sizes 64,8192: hyperparameter 'batch-size' = '8192' "
                                   "is not valid: expected an integer from 1 to 4096"),
    (["--lr-range", "0.01,20"], "--lr-range 0.01,20: hyperparameter 'lr' = '20.0' is not valid: "
                                "expected a number > 0 and <= 10"),
    (["--epochs-range", "5,20000"], "--epochs-range 5,20000: hyperparameter 'epochs' = '20000' "
                                    "is not valid: expected an integer from 1 to 10000"),
    (["--momentum-range", "0.5,1"], "--momentum-range 0.5,1: hyperparameter 'momentum' = '1.0' "
                                    "is not valid: expected a number in [0, 1)"),
    (["--weight-decay-range", "1e-5,2"], "--weight-decay-range 1e-5,2: hyperparameter "
                                         "'weight-decay' = '2.0' is not valid: expected a "
                                         "number in [0, 1]"),
])
def test_tune_refuses_a_range_or_size_the_jobs_schema_refuses_before_any_aws_call(
        aws, capsys, argv, message):
    """Each value a tuner may hand a training job is checked with the job's own schema: one
    the container would refuse fails every job of the tuner minutes later (8192 passed the
    positive-integer check before)."""
    code, _, err = run(capsys, "tune", "--no-wait", *argv)
    assert code == 1 and message in err, err
    assert ("sagemaker", "CreateHyperParameterTuningJob") not in aws.calls


def summary(name, lr, value):
    return {"TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:x:1:t/{name}",
            "CreationTime": "2026-11-21T10:00:00Z", "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"lr": lr, "batch-size": "64", "epochs": "12"},
            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_accuracy",
                                                            "Value": value}}


def test_tune_attach_prints_jobs_best_first(capsys):
    sm = boto3.client("sagemaker", region_name=REGION)
    with Stubber(sm) as stub:  # moto lacks ListTrainingJobsForHyperParameterTuningJob
        stub.add_response("describe_hyper_parameter_tuning_job", TUNING_DESCRIPTION,
                          {"HyperParameterTuningJobName": "dogs-tune-1"})
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job",
                          {"TrainingJobSummaries": [summary("dogs-tune-1-001-a", "0.1", 0.41)],
                           "NextToken": "t"})
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job",
                          {"TrainingJobSummaries": [summary("dogs-tune-1-002-b", "0.01", 0.83)]})
        assert tune.print_tuning_results(sm, "dogs-tune-1") == 0
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["training", "job", "status"]
    assert lines[3].startswith("dogs-tune-1-002-b") and "0.8300" in lines[3]
    assert lines[4].startswith("dogs-tune-1-001-a")
    assert "best: dogs-tune-1-002-b valid_accuracy=0.83" in out
