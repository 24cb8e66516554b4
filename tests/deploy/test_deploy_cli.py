"""deploy.py against moto 5.2.5 with botocore's own parameter validation, botocore's Stubber
where moto has gaps, the real `train` log for the metric regexes and a real `serve` process for
predict. No AWS, no network."""

from __future__ import annotations

import copy
import io
import json
import re
import urllib.request
from collections import defaultdict

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto import mock_aws

import deploy
from deployment import aws as deploy_aws, settings as deploy_settings
from deployment.commands import train as train_verb, tune as tune_verb
from tests.conftest import DOG_PHOTOS, FAST_HYPERPARAMETERS
from train import metrics

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
REPO = "sagemaker-dog-breeds"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}:latest"
BUCKET = "dog-breeds-test"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and region, SDK telemetry off, no deploy.toml, state in tmp."""
    config = tmp_path / "sagemaker.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "AWS_EC2_METADATA_DISABLED": "true",
                       "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
                       "DEPLOY_ROLE": ROLE, "DEPLOY_BUCKET": BUCKET}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DEPLOY_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(deploy_settings, "STATE_FILE", tmp_path / "state.json")


def _copy(value):
    try:
        return copy.deepcopy(value)
    except TypeError:  # upload bodies (open files)
        return repr(value)


class Recorder:
    """Every request's parameters, per (service, operation), as botocore validated them."""

    def __init__(self):
        self.session = boto3.Session(region_name=REGION)
        self.calls: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.session.events.register("before-parameter-build.*.*", self._record)

    def _record(self, params, model, event_name, **_):
        service = event_name.split(".")[1]
        self.calls[(service, model.name)].append({k: _copy(v) for k, v in params.items()})

    def one(self, operation: str, service: str = "sagemaker") -> dict:
        calls = self.calls[(service, operation)]
        assert len(calls) == 1, (operation, len(calls))
        return calls[0]


@pytest.fixture
def aws(monkeypatch):
    """moto with an ECR image and a bucket; deploy.py's sessions record their requests."""
    with mock_aws():
        ecr = boto3.client("ecr", region_name=REGION)
        ecr.create_repository(repositoryName=REPO)
        manifest = json.dumps({"schemaVersion": 2, "mediaType":
                               "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {}, "layers": []})
        ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag="latest")
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        recorder = Recorder()
        monkeypatch.setattr(deploy_aws, "make_boto_session", lambda region: recorder.session)
        yield recorder


def run(capsys, *argv) -> tuple[int, str, str]:
    code = deploy.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def channels(request: dict) -> dict[str, str]:
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]}


# ------------------------------------------------------------------------------------ names
def test_hyperparameter_values_are_checked_before_any_aws_call(aws, capsys):
    """deploy.py reads train/hyperparameters.py, the job's own schema: a bad value is one line
    naming the key and the accepted values, and no request reaches AWS."""
    code, out, err = run(capsys, "train", "--no-wait", "--hp", "lr=abc")
    assert code == 1 and err.count("\n") == 1, err
    assert "'lr' = 'abc' is not valid: expected a number > 0 and <= 10" in err
    assert not aws.calls
    code, out, err = run(capsys, "tune", "--no-wait", "--hp", "arch=resnet51")
    assert code == 1 and "a torchvision classification model name" in err and not aws.calls


# ------------------------------------------------------------------------------------ train
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


# ------------------------------------------------------------------------------------- tune
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


TUNING_DESCRIPTION = {
    "HyperParameterTuningJobName": "dogs-tune-1",
    "HyperParameterTuningJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:hyper-parameter-"
                                  "tuning-job/dogs-tune-1",
    "HyperParameterTuningJobConfig": {
        "Strategy": "Bayesian",
        "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid_accuracy"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1}},
    "HyperParameterTuningJobStatus": "Completed",
    "CreationTime": "2026-11-21T10:00:00Z",
    "TrainingJobStatusCounters": {}, "ObjectiveStatusCounters": {},
    "BestTrainingJob": {
        "TrainingJobName": "dogs-tune-1-002-b", "TrainingJobArn": "arn:aws:sagemaker:x:1:t/b",
        "CreationTime": "2026-11-21T10:00:00Z", "TrainingJobStatus": "Completed",
        "TunedHyperParameters": {"lr": "0.01", "batch-size": "64", "epochs": "12"},
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_accuracy",
                                                        "Value": 0.83}},
}


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
        assert tune_verb.print_tuning_results(sm, "dogs-tune-1") == 0
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["training", "job", "status"]
    assert lines[3].startswith("dogs-tune-1-002-b") and "0.8300" in lines[3]
    assert lines[4].startswith("dogs-tune-1-001-a")
    assert "best: dogs-tune-1-002-b valid_accuracy=0.83" in out


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
    real = tune_verb.best_hyperparameters
    monkeypatch.setattr(train_verb, "best_hyperparameters", lambda _sm, name: real(sm, name))
    code, out, err = run(capsys, "train", "--no-wait", "--tuning-job", "dogs-tune-1",
                         "--job-name", "dogs-best", "--hp", "epochs=20")
    assert code == 0, err
    assert aws.one("CreateTrainingJob")["HyperParameters"] == {
        "lr": "0.01", "batch-size": "64", "epochs": "20", "arch": "resnet50"}
    assert "the best job of dogs-tune-1" in out


# ----------------------------------------------------------------------------------- deploy
def test_deploy_real_time_with_autoscaling_then_delete_twice(aws, capsys):
    model_data = f"s3://{BUCKET}/dog-breeds/output/dogs-1/output/model.tar.gz"
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", model_data,
                         "--endpoint", "dogs-ep", "--instance-type", "ml.m5.xlarge",
                         "--startup-timeout", "900", "--autoscale-max", "4")
    assert code == 0, err
    model = aws.one("CreateModel")
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == model_data
    assert model["ExecutionRoleArn"] == ROLE
    config = aws.one("CreateEndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["ModelName"] == model["ModelName"]
    assert variant["InstanceType"] == "ml.m5.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert "InferenceAmiVersion" not in variant  # a CPU instance type gets SageMaker's default
    endpoint = aws.one("CreateEndpoint")
    assert endpoint["EndpointName"] == "dogs-ep"
    assert endpoint["EndpointConfigName"] == config["EndpointConfigName"]
    target = aws.one("RegisterScalableTarget", "application-auto-scaling")
    assert target["ResourceId"] == "endpoint/dogs-ep/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    policy = aws.one("PutScalingPolicy", "application-auto-scaling")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert "created model" in out and "autoscaling" in out

    code, out, _ = run(capsys, "deploy", "--no-wait", "--model-data", model_data,
                       "--endpoint", "dogs-ep")
    assert code == 0 and "already exists" in out
    assert len(aws.calls[("sagemaker", "CreateModel")]) == 1

    code, out, err = run(capsys, "delete", "--endpoint", "dogs-ep")
    assert code == 0, err
    assert "deleted endpoint dogs-ep" in out and "deleted endpoint config" in out
    assert f"deleted model {model['ModelName']}" in out
    code, out, err = run(capsys, "delete", "--endpoint", "dogs-ep")
    assert code == 0, err
    assert "endpoint dogs-ep: already gone" in out


def test_deploy_serverless_and_async(aws, capsys):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--endpoint", "dogs-sl", "--serverless", "--memory-mb", "4096")
    assert code == 0, err
    (variant,) = aws.one("CreateEndpointConfig")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    assert "InstanceType" not in variant and "InferenceAmiVersion" not in variant
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--endpoint", "dogs-async", "--async",
                       "--instance-type", "ml.g4dn.xlarge")  # moto's enum lacks ml.g5
    assert code == 0, err
    config = aws.calls[("sagemaker", "CreateEndpointConfig")][1]
    assert config["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == \
        f"s3://{BUCKET}/dog-breeds/async-output/dogs-async"


# -------------------------------------------------------------------------------- bad input
def test_image_missing_from_ecr_is_one_line(aws, capsys):
    code, _, err = run(capsys, "train", "--no-wait", "--image",
                       f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}:nope")
    assert code == 1 and "is not in ECR" in err and "build_and_push.sh" in err
    assert err.count("\n") == 1


def test_missing_role_is_one_line(aws, capsys, monkeypatch):
    monkeypatch.delenv("DEPLOY_ROLE")
    code, _, err = run(capsys, "train", "--no-wait")
    assert code == 1 and err.startswith("error: no IAM role") and err.count("\n") == 1


def test_no_credentials_is_one_line(capsys, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run(capsys, "delete", "--endpoint", "x")
    assert code == 1 and "no AWS credentials" in err and err.count("\n") == 1


def test_unwritable_bucket_is_one_line(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "d", image_size=8, per_class=3)
    code, _, err = run(capsys, "data", "--source", str(src), "--bucket", "no-such-bucket")
    assert code == 1 and "NoSuchBucket" in err and err.count("\n") == 1


def test_deploy_without_a_model_is_one_line(aws, capsys):
    code, _, err = run(capsys, "deploy", "--endpoint", "x", "--no-wait")
    assert code == 1 and "no model" in err


# ------------------------------------------------------------------------------------- data
def s3_objects(prefix: str = "") -> dict[str, bytes]:
    s3 = boto3.client("s3", region_name=REGION)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                               Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def tree_objects(root) -> dict[str, bytes]:
    """The objects ``deploy.py data --source root`` should leave under the data prefix."""
    return {f"dog-breeds/data/{f.relative_to(root).as_posix()}": f.read_bytes()
            for f in root.rglob("*.jpg")}


def test_data_uploads_once_and_prints_uris(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=6)
    files = sorted(p for p in src.rglob("*.jpg"))
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0, err
    assert f"uploaded {len(files)} files" in out
    for split in ("train", "valid", "test"):
        assert f"{split}: s3://{BUCKET}/dog-breeds/data/{split}" in out
    assert s3_objects() == tree_objects(src)
    puts = len(aws.calls[("s3", "PutObject")])
    code, out, _ = run(capsys, "data", "--source", str(src))
    assert code == 0 and (f"uploaded 0 files (0.0 MB), {len(files)} already there, deleted 0 "
                          f"objects not in {src}\n") in out
    assert len(aws.calls[("s3", "PutObject")]) == puts and not aws.calls[("s3", "DeleteObjects")]


def test_data_a_second_upload_leaves_exactly_the_second_set(aws, capsys, tmp_path):
    """Fewer photos per class, then another source: the data prefix holds exactly the set of
    the last run (the job trained on the union of both before); objects outside the data
    prefix are not touched."""
    from tools.datasets import write_digits
    from tools.folders import count_images

    s3 = boto3.client("s3", region_name=REGION)
    for key in ("dog-breeds/output/job-1/model.tar.gz", "dog-breeds/data-old/x.jpg",
                "other/data/train/001.a/x.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not ours")
    digits = write_digits(tmp_path / "digits", image_size=8, per_class=12)
    code, _, err = run(capsys, "data", "--source", str(digits))
    assert code == 0, err
    code, out, err = run(capsys, "data", "--source", str(digits), "--per-class", "2")
    assert code == 0, err
    fewer = tmp_path / "digits-2"  # the copy --per-class cuts beside the source
    assert count_images(fewer) == {"train": (10, 20), "valid": (10, 20), "test": (10, 20)}
    stale = len(tree_objects(digits)) - len(tree_objects(fewer))
    assert (f"uploaded 0 files (0.0 MB), {len(tree_objects(fewer))} already there, deleted "
            f"{stale} objects not in {fewer}") in out
    assert s3_objects("dog-breeds/data/") == tree_objects(fewer)

    dogs = tmp_path / "dogs"
    for i, photo in enumerate(DOG_PHOTOS[:4]):
        folder = dogs / ("train" if i < 2 else "valid") / f"00{i % 2 + 1}.Breed_{i % 2 + 1}"
        folder.mkdir(parents=True)
        (folder / photo.name).write_bytes(photo.read_bytes())
    code, out, err = run(capsys, "data", "--source", str(dogs))
    assert code == 0, err
    assert "uploaded 4 files" in out and f"deleted {len(tree_objects(fewer))} objects" in out
    assert s3_objects("dog-breeds/data/") == tree_objects(dogs)
    assert "test: s3://" not in out  # dogs has no test split: no URI for it
    assert set(s3_objects()) - set(tree_objects(dogs)) == {
        "dog-breeds/output/job-1/model.tar.gz", "dog-breeds/data-old/x.jpg",
        "other/data/train/001.a/x.jpg"}


def test_data_reuploads_a_changed_photo_of_the_same_size(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    assert run(capsys, "data", "--source", str(src))[0] == 0
    photo = sorted(src.rglob("*.jpg"))[0]
    body = bytearray(photo.read_bytes())
    body[-3] ^= 0xFF  # same size, other bytes
    photo.write_bytes(bytes(body))
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0 and "uploaded 1 files" in out, err
    assert s3_objects() == tree_objects(src)


def test_data_deletes_in_batches_of_at_most_1000_keys(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    s3 = boto3.client("s3", region_name=REGION)
    for i in range(1003):
        s3.put_object(Bucket=BUCKET, Key=f"dog-breeds/data/train/999.old/{i:04d}.jpg", Body=b"")
    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    code, out, err = run(capsys, "data", "--source", str(src))
    assert code == 0 and "deleted 1003 objects" in out, err
    assert [len(c["Delete"]["Objects"]) for c in aws.calls[("s3", "DeleteObjects")]] == [1000, 3]
    assert s3_objects() == tree_objects(src)


def test_data_refuses_a_source_without_classes_and_deletes_nothing(aws, capsys, tmp_path):
    from tools.datasets import write_digits

    src = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    assert run(capsys, "data", "--source", str(src))[0] == 0
    empty = tmp_path / "empty"
    for split in ("train", "valid"):
        (empty / split / "001.Empty").mkdir(parents=True)
    code, out, err = run(capsys, "data", "--source", str(empty))
    assert code == 1 and err.endswith(f"error: {empty / 'train'} has no class folder with photos;"
                                      " expected NNN.Breed_name/*.jpg\n"), err
    assert "skipping 1 folder that is not a class: 001.Empty (no photos)" in err
    assert s3_objects() == tree_objects(src)


# ------------------------------------------------------------------ metric regexes, real log
@pytest.mark.slow
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


# ------------------------------------------------------------------ predict via a real serve
class _Raw(io.BytesIO):
    """What botocore reads a response from: read()/close() for streaming bodies, stream()."""

    def stream(self, **_):
        yield self.getvalue()


@pytest.mark.slow
def test_predict_goes_through_sdk_predictor_to_real_serve(server, capsys, monkeypatch):
    session = boto3.Session(region_name=REGION)
    sent = []

    def to_serve(request, **_):
        if not request.url.endswith("/invocations"):
            return None
        headers = {k: v.decode() if isinstance(v, bytes) else v
                   for k, v in request.headers.items()
                   if k in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")}
        sent.append(headers)
        req = urllib.request.Request(server.url + "/invocations", data=request.body,
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return AWSResponse(request.url, r.status, dict(r.headers), _Raw(r.read()))

    session.events.register("before-send.sagemaker-runtime.InvokeEndpoint", to_serve)
    monkeypatch.setattr(deploy_aws, "make_boto_session", lambda region: session)
    photos = [str(p) for p in DOG_PHOTOS[:2]]
    code, out, err = run(capsys, "predict", "--endpoint", "dogs-ep", "-k", "2", *photos)
    assert code == 0, err
    assert sent and sent[0]["Content-Type"] == "image/jpeg"
    assert sent[0]["X-Amzn-SageMaker-Custom-Attributes"] == "k=2"
    classes = json.loads(_manifest_of(server).read_text())["classes"]
    for photo in photos:
        direct = urllib.request.Request(server.url + "/invocations",
                                        data=open(photo, "rb").read(),
                                        headers={"Content-Type": "image/jpeg"}, method="POST")
        with urllib.request.urlopen(direct, timeout=60) as r:
            top = json.loads(r.read())["predictions"][0]["top_k"][0]["label"]
        row = next(line for line in out.splitlines() if line.startswith(photo.split("/")[-1]))
        assert top in row, (top, row)
    rows = out.splitlines()[2:]  # header and rule first
    assert len(rows) == 2 * len(photos)
    assert all(any(label in row for label in classes) for row in rows), out


def _manifest_of(server):
    """The manifest.json of the model the running serve process loaded (its SM_MODEL_DIR)."""
    from pathlib import Path

    import psutil

    env = psutil.Process(server.proc.pid).environ()
    return Path(env["SM_MODEL_DIR"]) / "manifest.json"


# ------------------------------------------------------------------------------------ local
def test_local_builds_local_session_train_and_deploy(capsys, monkeypatch, tmp_path):
    """Local mode without a Docker engine: the LocalSession, fit and deploy calls are checked;
    the real run against podman is not part of this test."""
    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession
    from sagemaker.model import Model
    from tools.datasets import write_digits

    data = write_digits(tmp_path / "digits", image_size=8, per_class=6)
    seen = {}

    def fit(self, inputs, job_name=None, **kw):
        seen["fit"] = (self, inputs, job_name)
        self._fake_model = f"file://{tmp_path}/out/model.tar.gz"

    class FakePredictor:
        serializer = None

        def predict(self, data, custom_attributes=None):
            return {"predictions": [{"top_k": [{"label": "digit_1", "index": 1,
                                                "probability": 0.9}]}]}

        def delete_endpoint(self):
            seen["deleted"] = True

    def deploy_(self, **kw):
        seen["deploy"] = (self, kw)
        return FakePredictor()

    monkeypatch.setattr(Estimator, "fit", fit)
    monkeypatch.setattr(Estimator, "model_data", property(lambda self: self._fake_model))
    monkeypatch.setattr(Model, "deploy", deploy_)
    code, out, err = run(capsys, "local", "--data-dir", str(data), "--mode", "local_gpu",
                         "--hp", "epochs=1", "--output", str(tmp_path / "out"),
                         "--images", str(DOG_PHOTOS[0]))
    assert code == 0, err
    est, inputs, _ = seen["fit"]
    assert isinstance(est.sagemaker_session, LocalSession)
    assert est.instance_type == "local_gpu" and est.image_uri == "sagemaker-dog-breeds:latest"
    assert inputs == {s: f"file://{data / s}" for s in ("train", "valid", "test")}
    assert est.hyperparameters() == {"epochs": "1"}
    model, kw = seen["deploy"]
    assert kw == {"initial_instance_count": 1, "instance_type": "local_gpu"}
    assert model.model_data == f"file://{tmp_path}/out/model.tar.gz"
    assert isinstance(model.sagemaker_session, LocalSession)
    assert seen["deleted"] and "digit_1" in out


# --------------------------------------------------------------------------------- settings
def test_settings_file_then_environment_then_options(monkeypatch, tmp_path):
    example = deploy_settings.ROOT / "deploy.example.toml"
    settings = deploy_settings.load_settings(str(example))
    assert settings["role"].startswith("arn:aws:iam::") and settings["region"] == "eu-west-1"
    monkeypatch.setenv("DEPLOY_ENDPOINT", "from-env")
    assert deploy_settings.load_settings(str(example))["endpoint"] == "from-env"
    bad = tmp_path / "bad.toml"
    bad.write_text('rgion = "x"\n')
    with pytest.raises(deploy_settings.UserError, match="unknown key"):
        deploy_settings.load_settings(str(bad))


@pytest.mark.parametrize("operation, code, message, expected", [
    ("InvokeEndpoint", "ValidationException", "Endpoint dogs-ep of account 1 not found.",
     "python deploy.py deploy"),
    ("CreateTrainingJob", "ResourceLimitExceeded", "The account-level service limit "
     "'ml.g5.xlarge for spot training job usage' is 0 Instances", "Service Quotas"),
    ("PutObject", "AccessDenied", "Access Denied", "cannot be written"),
    ("CreateEndpoint", "ValidationException", "Cannot create already existing endpoint",
     "the AWS message says what to change"),
])
def test_aws_errors_become_one_line_with_a_fix(operation, code, message, expected):
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": code, "Message": message}}, operation)
    line = deploy_aws.describe_error(exc)
    assert line.startswith(f"{operation} failed ({code})") and expected in line
    assert "\n" not in line


def test_a_bug_keeps_its_traceback():
    assert deploy_aws.describe_error(KeyError("x")) is None


# ---------------------------------------------------------------------------------- monitor
def test_monitor_puts_alarms_and_a_dashboard_idempotently_and_delete_removes_them(aws, capsys):
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:dogs-alarms"
    argv = ("monitor", "--endpoint", "dogs-ep", "--latency-p99-ms", "800", "--sns-topic", topic)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    alarms = {c["AlarmName"]: c for c in aws.calls[("cloudwatch", "PutMetricAlarm")]}
    assert set(alarms) == {"dogs-ep-latency-p99", "dogs-ep-error-rate", *(
        f"dogs-ep-drift-{s}" for s in ("predictedclass", "confidence", "brightness",
                                       "aspectratio", "megapixels"))}
    latency = alarms["dogs-ep-latency-p99"]
    assert latency["Namespace"] == "SageMakerDogBreeds" and latency["MetricName"] == "LatencyP99"
    assert latency["Threshold"] == 800 and latency["Statistic"] == "Maximum"
    assert {"Name": "EndpointName", "Value": "dogs-ep"} in latency["Dimensions"]
    assert latency["AlarmActions"] == [topic] and "What to do" in latency["AlarmDescription"]
    rate = alarms["dogs-ep-error-rate"]
    assert [m["Id"] for m in rate["Metrics"]] == ["invocations", "errors", "rate"]
    assert rate["Metrics"][2]["Expression"] == "IF(invocations > 0, errors / invocations, 0)"
    assert alarms["dogs-ep-drift-brightness"]["Threshold"] == 0.25
    (dashboard,) = aws.calls[("cloudwatch", "PutDashboard")]
    body = json.loads(dashboard["DashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert "Latency (ms)" in titles and "Drift (PSI against the training baseline)" in titles
    cw = aws.session.client("cloudwatch", region_name=REGION)
    assert len(cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"]) == 7

    code, out, err = run(capsys, *argv)  # again: the same alarms and dashboard, replaced
    assert code == 0, err
    assert len(cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"]) == 7
    assert len(cw.list_dashboards()["DashboardEntries"]) == 1

    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--delete")
    assert code == 0, err
    assert "deleted 7 alarms of dogs-ep" in out and "deleted dashboard dogs-ep-monitoring" in out
    assert cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"] == []
    assert cw.list_dashboards()["DashboardEntries"] == []
    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--delete")
    assert code == 0 and "already gone" in out


def test_monitor_rejects_a_bad_error_rate_before_any_call(aws, capsys):
    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--error-rate", "5")
    assert code == 1 and "--error-rate 5.0: a share between 0 and 1" in err
    assert not aws.calls[("cloudwatch", "PutMetricAlarm")]


def test_deploy_with_data_capture_names_the_endpoint_and_delete_removes_monitoring(aws, capsys):
    model_data = f"s3://{BUCKET}/dog-breeds/output/dogs-1/output/model.tar.gz"
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", model_data,
                         "--endpoint", "dogs-ep", "--instance-type", "ml.m5.xlarge",
                         "--capture", "10")
    assert code == 0, err
    env = aws.one("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SERVE_ENDPOINT_NAME"] == "dogs-ep" and env["SERVE_VARIANT_NAME"] == "AllTraffic"
    capture = aws.one("CreateEndpointConfig")["DataCaptureConfig"]
    assert capture["EnableCapture"] is True and capture["InitialSamplingPercentage"] == 10
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/dog-breeds/capture/dogs-ep"
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}]
    assert run(capsys, "monitor", "--endpoint", "dogs-ep")[0] == 0
    code, out, err = run(capsys, "delete", "--endpoint", "dogs-ep")
    assert code == 0, err
    assert "deleted 7 alarms of dogs-ep" in out
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", model_data,
                         "--endpoint", "other", "--capture", "0")
    assert code == 1 and "--capture 0: a percentage of requests from 1 to 100" in err


# ------------------------------------------------------------------------- GPU hosts and AMIs
AMI_580 = "al2023-ami-sagemaker-inference-gpu-4-1"


@pytest.fixture
def gpu_enum(monkeypatch):
    """moto 5.2.5 knows five endpoint instance types (no ml.g5): check against botocore's own
    ProductionVariantInstanceType enum instead."""
    from moto.sagemaker.models import FakeEndpointConfig

    shape = boto3.client("sagemaker", region_name=REGION).meta.service_model.shape_for(
        "ProductionVariantInstanceType")

    def validate_instance_type(self, instance_type):
        assert instance_type in shape.enum, instance_type

    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", validate_instance_type)


def test_deploy_on_the_default_gpu_instance_type_picks_the_580_driver_ami(aws, gpu_enum, capsys):
    """ml.g5 runs driver 470 unless the variant names an AMI; torch's CUDA 13 needs 580."""
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                         "--endpoint", "dogs-gpu")
    assert code == 0, err
    (variant,) = aws.one("CreateEndpointConfig")["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InferenceAmiVersion"] == AMI_580
    assert f"(1 x ml.g5.xlarge, InferenceAmiVersion {AMI_580})" in out


def test_deploy_update_keeps_the_ami_and_the_new_model(aws, gpu_enum, capsys):
    """The SDK's Predictor.update_endpoint would build the new variant without the AMI."""
    from botocore.awsrequest import AWSResponse as Response

    def update_endpoint(**_):  # moto 5.2.5 has no UpdateEndpoint
        return Response("https://sagemaker", 200, {}, None), {
            "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/dogs-gpu"}

    aws.session.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    assert run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m1.tar.gz",
               "--endpoint", "dogs-gpu", "--capture", "5")[0] == 0
    code, out, err = run(capsys, "deploy", "--no-wait", "--update", "--model-data",
                         "s3://b/m2.tar.gz", "--endpoint", "dogs-gpu")
    assert code == 0, err
    first, second = aws.calls[("sagemaker", "CreateEndpointConfig")]
    (variant,) = second["ProductionVariants"]
    new_model = aws.calls[("sagemaker", "CreateModel")][1]["ModelName"]
    assert variant["ModelName"] == new_model and variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InferenceAmiVersion"] == AMI_580
    assert second["DataCaptureConfig"] == first["DataCaptureConfig"]  # copied from the old one
    update = aws.one("UpdateEndpoint")
    assert update == {"EndpointName": "dogs-gpu",
                      "EndpointConfigName": second["EndpointConfigName"]}
    assert f"updated endpoint dogs-gpu to model {new_model}" in out


REFUSALS = [
    (["--instance-type", "ml.p3.2xlarge"],
     "ml.p3.2xlarge has NVIDIA V100 GPUs (compute capability 7.0), for which the image's CUDA 13 "
     "build of torch has no kernels (sm_75 sm_80 sm_86 sm_90 sm_100 sm_120): pick ml.g4dn, "
     "ml.g5, ml.p4d, ml.p4de, ml.g6, ml.g6e, ml.p5, ml.p5e, ml.p5en, ml.p6-b200, ml.p6-b300, "
     "ml.g7e, or a CPU instance type"),
    (["--instance-type", "ml.g7.2xlarge"],
     "ml.g7.2xlarge: GPU family g7 is not in container/gpu_hosts.py, so its GPU and driver are "
     "unknown here: pick ml.g4dn, ml.g5, ml.p4d, ml.p4de, ml.g6, ml.g6e, ml.p5, ml.p5e, ml.p5en, "
     "ml.p6-b200, ml.p6-b300, ml.g7e, or add it there"),
    (["--inference-ami-version", "al2-ami-sagemaker-inference-gpu-9"],
     "--inference-ami-version al2-ami-sagemaker-inference-gpu-9 is not a known "
     "InferenceAmiVersion (botocore 1.44.5): pass auto or one of "
     "al2-ami-sagemaker-inference-gpu-2, al2-ami-sagemaker-inference-gpu-2-1, "
     "al2-ami-sagemaker-inference-gpu-3-1, al2023-ami-sagemaker-inference-gpu-4-1, "
     "al2-ami-sagemaker-inference-neuron-2"),
    (["--inference-ami-version", "al2-ami-sagemaker-inference-gpu-3-1"],
     "--inference-ami-version al2-ami-sagemaker-inference-gpu-3-1 runs NVIDIA driver 550 (CUDA "
     f"12.4), older than the 580 the image's CUDA 13 needs: pass auto ({AMI_580})"),
    (["--inference-ami-version", "al2-ami-sagemaker-inference-neuron-2"],
     "--inference-ami-version al2-ami-sagemaker-inference-neuron-2 is for Inferentia and "
     "Trainium (Neuron); this image runs on NVIDIA GPUs: pass auto"),
    (["--instance-type", "ml.m5.xlarge", "--inference-ami-version", AMI_580],
     f"--inference-ami-version {AMI_580} is for GPU instances and ml.m5.xlarge has no GPU: "
     "leave the option out"),
    (["--serverless", "--inference-ami-version", AMI_580],
     f"--inference-ami-version {AMI_580} is for GPU instances and a serverless endpoint has no "
     "GPU: leave the option out"),
]


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere: any AWS call would end in 'no AWS credentials'."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


@pytest.mark.parametrize("options, line", REFUSALS)
def test_an_instance_type_or_ami_the_image_cannot_run_on_is_refused_before_any_aws_call(
        no_credentials, capsys, options, line):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       *options)
    assert (code, err) == (1, f"error: {line}\n")


def test_deploy_refusal_reaches_no_aws_even_with_credentials(aws, capsys):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--instance-type", "ml.p3.2xlarge")
    assert code == 1 and "no kernels" in err and not aws.calls


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
