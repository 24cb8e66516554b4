"""deploy.py deploy --async and predict --async against moto (botocore's request validation):
the endpoint config, the model's environment, the scale-to-zero policies and their alarm, and
photos queued through S3."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from tests.conftest import DOG_PHOTOS
from tests.deployment.conftest import ACCOUNT, BUCKET, REGION, run

SUCCESS = f"arn:aws:sns:{REGION}:{ACCOUNT}:dogs-ok"
ERROR = f"arn:aws:sns:{REGION}:{ACCOUNT}:dogs-failed"


def deploy_async(capsys, *options):
    # moto 5.2.5's endpoint instance types lack ml.g5 and the CPU ones default to none here.
    return run(capsys, "deploy", "--no-wait", "--model-data", f"s3://{BUCKET}/m.tar.gz",
               "--endpoint", "dogs-async", "--async", "--instance-type", "ml.m5.xlarge",
               *options)


def test_deploy_async_that_scales_to_zero_then_delete(aws, capsys):
    code, out, err = deploy_async(capsys, "--output-path", f"s3://{BUCKET}/answers",
                                  "--sns-success", SUCCESS, "--sns-error", ERROR,
                                  "--async-concurrency", "48",
                                  "--invocation-timeout", "1800", "--autoscale-max", "3",
                                  "--min-instances", "0")
    assert code == 0, err
    env = aws.one("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] == "1024"  # an asynchronous endpoint's 1 GB
    assert env["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "1800"
    assert env["SAGEMAKER_MODEL_SERVER_MAX_QUEUE"] == "48"  # one worker may get them all
    config = aws.one("CreateEndpointConfig")["AsyncInferenceConfig"]
    assert config == {
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/answers",
                         "S3FailurePath": f"s3://{BUCKET}/dog-breeds/async-failures/dogs-async",
                         "NotificationConfig": {"SuccessTopic": SUCCESS, "ErrorTopic": ERROR}},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 48}}
    target = aws.one("RegisterScalableTarget", "application-auto-scaling")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    tracking, step = aws.calls[("application-auto-scaling", "PutScalingPolicy")]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 5.0,
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": "dogs-async"}],
            "Statistic": "Average"},
        "ScaleInCooldown": 600, "ScaleOutCooldown": 300}
    assert step["PolicyType"] == "StepScaling"
    assert step["StepScalingPolicyConfiguration"] == {
        "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
        "Cooldown": 300,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]}
    alarm = aws.one("PutMetricAlarm", "cloudwatch")
    aas = boto3.client("application-autoscaling", region_name=REGION)
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    step_arn = next(p["PolicyARN"] for p in policies if p["PolicyType"] == "StepScaling")
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "dogs-async"}]
    assert (alarm["Statistic"], alarm["Period"], alarm["EvaluationPeriods"], alarm["Threshold"],
            alarm["ComparisonOperator"]) == ("Average", 60, 2, 1,
                                             "GreaterThanOrEqualToThreshold")
    assert alarm["AlarmActions"] == [step_arn]
    assert "0 to 3 instances, target 5 queued requests per instance; from zero on alarm " \
           "dogs-async-has-backlog-without-capacity" in out
    assert "python deploy.py predict --async --endpoint dogs-async" in out
    # delete takes the alarm with the autoscaling.
    code, out, err = run(capsys, "delete", "--endpoint", "dogs-async")
    assert code == 0, err
    assert "deleted alarm dogs-async-has-backlog-without-capacity" in out
    assert not boto3.client("cloudwatch", region_name=REGION).describe_alarms(
        AlarmNames=["dogs-async-has-backlog-without-capacity"])["MetricAlarms"]


def test_deploy_async_defaults(aws, capsys):
    code, out, err = deploy_async(capsys)
    assert code == 0, err
    env = aws.one("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "900"  # InvokeEndpointAsync's default
    assert "SAGEMAKER_MODEL_SERVER_MAX_QUEUE" not in env
    config = aws.one("CreateEndpointConfig")["AsyncInferenceConfig"]
    assert config == {"OutputConfig": {
        "S3OutputPath": f"s3://{BUCKET}/dog-breeds/async-output/dogs-async",
        "S3FailurePath": f"s3://{BUCKET}/dog-breeds/async-failures/dogs-async"}}
    assert not aws.calls[("application-auto-scaling", "RegisterScalableTarget")]


@pytest.mark.parametrize("options, line", [
    (["--sns-success", SUCCESS], "--sns-success is for asynchronous endpoints: add --async"),
    (["--invocation-timeout", "600"],
     "--invocation-timeout is for asynchronous endpoints: add --async"),
    (["--autoscale-max", "2", "--min-instances", "0"],
     "--min-instances 0: at least 1, or 0 with --async (only asynchronous endpoints scale to "
     "zero)"),
    (["--min-instances", "0"], "--min-instances needs --autoscale-max N: it is autoscaling's "
                               "minimum"),
    (["--async", "--async-concurrency", "0"],
     "--async-concurrency 0: from 1 to 1000 (MaxConcurrentInvocationsPerInstance)"),
    (["--async", "--invocation-timeout", "4000"],
     "--invocation-timeout 4000: seconds from 1 to 3600 (SageMaker's limit for transform jobs "
     "and asynchronous endpoints)"),
    (["--async", "--sns-error", "dogs-failed"],
     "--sns-error dogs-failed: an SNS topic ARN, arn:aws:sns:REGION:ACCOUNT:NAME"),
    (["--async", "--autoscale-max", "2", "--instance-count", "3"],
     "--autoscale-max 2 is below --instance-count 3"),
])
def test_an_async_option_out_of_place_is_one_line_before_any_aws_call(aws, capsys, options,
                                                                        line):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--instance-type", "ml.m5.xlarge", *options)
    assert (code, err) == (1, f"error: {line}\n")
    assert not aws.calls


class FakeAsyncEndpoint:
    """SageMaker's asynchronous endpoint as predict sees it (moto answers InvokeEndpointAsync
    with canned data): each request's input is read from S3 and its answer written where the
    response says, except for the photos named in ``never`` (still queued)."""

    def __init__(self, aws, never=()):
        self.s3 = boto3.client("s3", region_name=REGION)
        self.never = never
        aws.session.events.register("before-call.sagemaker-runtime.InvokeEndpointAsync",
                                    self.invoke)

    def invoke(self, params, **_):
        location = params["headers"]["X-Amzn-SageMaker-InputLocation"]
        bucket, key = location[5:].split("/", 1)
        name = key.rsplit("/", 1)[1]
        out_key = f"dog-breeds/async-output/dogs-async/{name}.out"
        assert self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()[:2] == b"\xff\xd8"
        if not any(n in name for n in self.never):
            self.s3.put_object(Bucket=BUCKET, Key=out_key, Body=json.dumps({
                "predictions": [{"top_k": [{"label": "Brittany", "index": 36,
                                            "probability": 0.91}]}]}).encode(),
                ContentType="application/json")
        return AWSResponse("https://runtime", 202, {}, None), {
            "OutputLocation": f"s3://{BUCKET}/{out_key}", "InferenceId": name}


def test_predict_async_uploads_queues_and_reads_the_answers(aws, capsys):
    assert deploy_async(capsys, "--invocation-timeout", "1800")[0] == 0
    photos = [str(p) for p in DOG_PHOTOS[:3]]
    FakeAsyncEndpoint(aws, never=[DOG_PHOTOS[2].name])
    code, out, err = run(capsys, "predict", "--async", "--endpoint", "dogs-async", "--wait", "1",
                         *photos)
    assert code == 0, err
    calls = aws.calls[("sagemaker-runtime", "InvokeEndpointAsync")]
    assert len(calls) == 3
    for call, photo in zip(calls, DOG_PHOTOS):
        assert call["ContentType"] == "image/jpeg" and call["CustomAttributes"] == "k=3"
        assert call["InvocationTimeoutSeconds"] == 1800  # the endpoint's, remembered by deploy
        assert call["InputLocation"].startswith(
            f"s3://{BUCKET}/dog-breeds/async-input/dogs-async/")
        assert call["InputLocation"].endswith(photo.name)
    assert f"{DOG_PHOTOS[0].name}  1     Brittany  0.910" in out
    assert f"{DOG_PHOTOS[2].name}: not answered yet; it will land at s3://{BUCKET}/" in out
    code, out, err = run(capsys, "predict", "--async", "--endpoint", "dogs-async", "--no-wait",
                         photos[2])
    assert code == 0 and f"{DOG_PHOTOS[2].name}: not answered yet; it will land at" in out
