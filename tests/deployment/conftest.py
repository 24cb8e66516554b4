"""deploy.py's tests run against moto 5.2.5 with botocore's own parameter validation (and
botocore's Stubber where moto has gaps): fake credentials and region, a recorder of every
request, the state file in a temporary folder. No AWS, no network."""

from __future__ import annotations

import copy
import json
import types
from collections import defaultdict

import boto3
import pytest
import sagemaker  # noqa: F401  (imported at collection: seconds no single test should carry)
from moto import mock_aws

import deploy
from deployment import rollout
from deployment import sessions as deploy_sessions
from deployment import settings as deploy_settings

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
REPO = "sagemaker-dog-breeds"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{REPO}:latest"
BUCKET = "dog-breeds-test"


# A completed tuning job's description, as DescribeHyperParameterTuningJob answers it.
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


def _pools_known_to_moto(monkeypatch) -> None:
    """moto 5.2.5 predates ProductionVariant.InstancePools (botocore 1.44.5 has them) and
    refuses a variant without InstanceType: a pooled variant is left to botocore's validation
    of the request (its enum of types is newer than moto's list)."""
    from moto.sagemaker.models import FakeEndpointConfig

    original = FakeEndpointConfig.validate_production_variants

    def validate(self, variants):
        original(self, [v for v in variants if "InstancePools" not in v])

    monkeypatch.setattr(FakeEndpointConfig, "validate_production_variants", validate)


@pytest.fixture
def aws(monkeypatch):
    """moto with an ECR image and a bucket; deploy.py's sessions record their requests."""
    _pools_known_to_moto(monkeypatch)
    with mock_aws():
        ecr = boto3.client("ecr", region_name=REGION)
        ecr.create_repository(repositoryName=REPO)
        manifest = json.dumps({"schemaVersion": 2, "mediaType":
                               "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {}, "layers": []})
        ecr.put_image(repositoryName=REPO, imageManifest=manifest, imageTag="latest")
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        recorder = Recorder()
        monkeypatch.setattr(deploy_sessions, "make_boto_session", lambda region: recorder.session)
        yield recorder
    # Every call a test saw deploy.py make is one the documented caller policy allows.
    from deployment import iam

    lacking = iam.missing(recorder.calls)
    assert not lacking, f"docs/iam/caller-policy.json does not allow {lacking}"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = deploy.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def transform_objects(s3, request: dict) -> list[tuple[str, bytes]]:
    """(key relative to the input prefix, body) of each object a CreateTransformJob request
    makes SageMaker read, as the API reference's TransformS3DataSource says: every object under
    an S3Prefix, or the keys a ManifestFile lists under its "prefix"."""
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    bucket, key = source["S3Uri"][5:].split("/", 1)
    if source["S3DataType"] == "ManifestFile":
        head, *keys = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        bucket, prefix = head["prefix"][5:].split("/", 1)
    else:
        prefix = key
        keys = [o["Key"][len(prefix):] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return [(k, s3.get_object(Bucket=bucket, Key=prefix + k)["Body"].read()) for k in keys]


def is_image(body: bytes) -> bool:
    """Whether serve could decode ``body`` (Pillow recognises it); it answers 400 otherwise."""
    import io

    from PIL import Image

    try:
        Image.open(io.BytesIO(body)).verify()
        return True
    except Exception:  # noqa: BLE001 - Pillow raises several types for a non-image
        return False


def channels(request: dict) -> dict[str, str]:
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]}


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere: any AWS call would end in 'no AWS credentials'."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


# Two models and an endpoint of them, for update, rollback and the endpoint config's tests.
M1 = f"s3://{BUCKET}/dog-breeds/output/dogs-1/output/model.tar.gz"
M2 = f"s3://{BUCKET}/dog-breeds/output/dogs-2/output/model.tar.gz"


class Clock:
    """rollout's time: each sleep moves it on, so the lines' stamps are what a real run's
    polls every 30 s would print, without waiting."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def fake(aws, monkeypatch):
    """SageMaker's side of UpdateEndpoint (moto 5.2.5 has none), on rollout's fake clock."""
    from tests.deployment.fake_guardrails import FakeDeployments  # it imports this module

    monkeypatch.setattr(rollout, "time", types.SimpleNamespace(**{
        name: getattr(clock, name) for clock in [Clock()] for name in ("monotonic", "sleep")}))
    return FakeDeployments(aws.session)


def endpoint(capsys, *options, name="dogs-ep", monitor=True):
    """A real-time endpoint made by deploy (ml.m5.xlarge unless options say), with the alarms of
    monitor."""
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", M1, "--endpoint", name,
                       *(options or ("--instance-type", "ml.m5.xlarge")))
    assert code == 0, err
    if monitor:
        assert run(capsys, "monitor", "--endpoint", name)[0] == 0
