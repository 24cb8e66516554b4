"""deploy.py deploy (and delete): model, endpoint config and endpoint, real-time, serverless or
asynchronous, with autoscaling, data capture, the GPU driver's AMI and the serving options."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.deployment.conftest import BUCKET, IMAGE, REGION, REPO, ROLE, run


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
    # 4 vCPUs x 28.9 measured requests/s x 0.5 x 60: invocations per instance per minute.
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 3468
    assert "target 3468 invocations per instance per minute" in out
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


def test_deploy_without_a_model_is_one_line(aws, capsys):
    code, _, err = run(capsys, "deploy", "--endpoint", "x", "--no-wait")
    assert code == 1 and "no model" in err


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
    assert "deleted 8 alarms of dogs-ep" in out
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", model_data,
                         "--endpoint", "other", "--capture", "0")
    assert code == 1 and "--capture 0: a percentage of requests from 1 to 100" in err


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


def test_deploy_update_is_update_keeping_the_ami_and_the_endpoints_shape(aws, gpu_enum, capsys,
                                                                        monkeypatch):
    """deploy --update used to build the new variant from deploy's defaults (1 x ml.g5.xlarge,
    no AMI through the SDK's update_endpoint); it is now deploy.py update with its defaults."""
    from deployment import rollout
    from tests.deployment.fake_guardrails import FakeDeployments

    FakeDeployments(aws.session)  # moto 5.2.5 has no UpdateEndpoint
    monkeypatch.setattr(rollout, "POLL_S", 0)
    assert run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m1.tar.gz",
               "--endpoint", "dogs-gpu", "--capture", "5", "--instance-count", "2")[0] == 0
    assert run(capsys, "monitor", "--endpoint", "dogs-gpu")[0] == 0
    code, out, err = run(capsys, "deploy", "--update", "--model-data", "s3://b/m2.tar.gz",
                         "--endpoint", "dogs-gpu")
    assert code == 0, out + err
    first, second = aws.calls[("sagemaker", "CreateEndpointConfig")]
    (variant,) = second["ProductionVariants"]
    new_model = aws.calls[("sagemaker", "CreateModel")][1]["ModelName"]
    assert variant["ModelName"] == new_model and variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 2  # kept, not deploy's default of 1
    assert variant["InferenceAmiVersion"] == AMI_580
    assert second["DataCaptureConfig"] == first["DataCaptureConfig"]  # copied from the old one
    update = aws.one("UpdateEndpoint")
    assert update["EndpointConfigName"] == second["EndpointConfigName"] == new_model
    assert update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"][
        "Type"] == "CANARY"
    assert f"model {new_model}: s3://b/m2.tar.gz (2 x ml.g5.xlarge, InferenceAmiVersion " \
           f"{AMI_580})" in out


PICK = ("an x86 CPU type such as ml.c7i.xlarge or ml.m5.xlarge, or a GPU type of ml.g4dn, ml.g5, "
        "ml.p4d, ml.p4de, ml.g6, ml.g6e, ml.p5, ml.p5e, ml.p5en, ml.p6-b200, ml.p6-b300, ml.g7, "
        "ml.g7e")
REFUSALS = [
    (["--instance-type", "ml.p3.2xlarge"],
     "ml.p3.2xlarge has NVIDIA V100 GPUs (compute capability 7.0), for which the image's CUDA 13 "
     "build of torch has no kernels (sm_75 sm_80 sm_86 sm_90 sm_100 sm_120): pick ml.g4dn, "
     "ml.g5, ml.p4d, ml.p4de, ml.g6, ml.g6e, ml.p5, ml.p5e, ml.p5en, ml.p6-b200, ml.p6-b300, "
     "ml.g7, ml.g7e, or a CPU instance type"),
    (["--instance-type", "ml.c7g.xlarge"],
     f"ml.c7g.xlarge has Graviton (arm64) CPUs; the image is built for x86_64 (amd64) with CUDA "
     f"and cannot run there: pick {PICK}"),
    (["--instance-type", "ml.inf2.xlarge"],
     f"ml.inf2.xlarge has AWS Inferentia or Trainium (Neuron) accelerators; the image is built "
     f"for x86_64 (amd64) with CUDA and cannot run there: pick {PICK}"),
    (["--instance-type", "ml.p6e-gb200.36xlarge"],
     f"ml.p6e-gb200.36xlarge has NVIDIA GPUs beside Grace (arm64) CPUs; the image is built for "
     f"x86_64 (amd64) with CUDA and cannot run there: pick {PICK}"),
    (["--instance-type", "ml.q9.xlarge"],
     f"ml.q9.xlarge: instance family q9 is not classified in container/gpu_hosts.py "
     f"(HOST_KINDS), so whether the image runs there is unknown: pick {PICK}, or add it there"),
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


def test_deploy_passes_the_batching_options_in_the_model_environment(aws, capsys):
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                         "--endpoint", "dogs-ep", "--instance-type", "ml.m5.xlarge",
                         "--workers", "2", "--max-batch-size", "16", "--max-batch-delay-ms", "3")
    assert code == 0, err
    env = aws.one("CreateModel")["PrimaryContainer"]["Environment"]
    assert env == {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SERVE_ENDPOINT_NAME": "dogs-ep",
                   "SERVE_VARIANT_NAME": "AllTraffic", "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
                   "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "16",
                   "SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS": "3"}
    assert len(env) <= 16  # an inference component's container takes 16; CreateModel 100


@pytest.mark.parametrize("options, line", [
    (["--max-batch-size", "2000"], "--max-batch-size 2000: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="
     "'2000' must be at most 1024 (the largest batch a model program takes, "
     "contract/artifact.py); the endpoint's container would refuse to start"),
    (["--max-batch-size", "0"], "--max-batch-size 0: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE='0' "
     "must be at least 1; the endpoint's container would refuse to start"),
    (["--max-batch-delay-ms", "-1"], "--max-batch-delay-ms -1: "
     "SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS='-1' must be at least 0; the endpoint's "
     "container would refuse to start"),
])
def test_a_batching_option_serve_would_refuse_is_one_line_before_any_aws_call(
        aws, capsys, options, line):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--instance-type", "ml.m5.xlarge", *options)
    assert (code, err) == (1, f"error: {line}\n")
    assert not aws.calls


def test_deploy_serverless_warns_before_creating_anything_when_ecr_says_the_image_is_too_big(
        aws, capsys):
    manifest = json.dumps({"schemaVersion": 2, "layers": [],
                           "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"size": 11 * 1024**3}})  # moto reports this size
    boto3.client("ecr", region_name=REGION).put_image(
        repositoryName=REPO, imageManifest=manifest, imageTag="big")
    big = IMAGE.replace(":latest", ":big")
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--endpoint", "dogs-big", "--serverless", "--image", big)
    assert code == 0, err
    assert (f"warning: image {big} is 11.0 GiB in ECR, over SageMaker Serverless Inference's "
            "10 GiB image limit") in err
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                       "--endpoint", "dogs-small", "--serverless")
    assert code == 0 and "warning" not in err, err  # the fixture's image: 50 MiB


def test_deploy_sets_the_start_up_and_download_timeouts_from_the_image_and_the_model(aws, capsys):
    """A new instance pulls the image and downloads the model before /ping: their sizes (ECR's,
    S3's) give the variant's two timeouts, so a model that carries compiled programs (larger)
    is not cut off; --startup-timeout still wins."""
    from deployment import models

    key = "dog-breeds/compiled/model.tar.gz"
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key,
                                                      Body=b"\0" * (3 * 1024**2))
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", f"s3://{BUCKET}/{key}",
                       "--endpoint", "dogs-sized", "--instance-type", "ml.m5.xlarge")
    assert code == 0, err
    (variant,) = aws.one("CreateEndpointConfig")["ProductionVariants"]
    image = boto3.client("ecr", region_name=REGION).describe_images(
        repositoryName=REPO)["imageDetails"][0]["imageSizeInBytes"]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == min(3600, max(60, int(
        -(-(models.START_S["cpu"] + image / models.PULL_BYTES_PER_S) // 1))))
    assert variant["ModelDataDownloadTimeoutInSeconds"] == int(
        -(-(60 + 2 * 3 * 1024**2 / models.DOWNLOAD_BYTES_PER_S) // 1))
    # Sizes that cannot be read (no such object): the defaults, not a failure.
    assert models.startup_timeouts(aws.session, IMAGE, f"s3://{BUCKET}/nothing", True)[1] == 600
    gib = 6 * 1024**3  # the real image's size: 6 GiB at 40 MiB/s, and a GPU's start
    assert models.MIN_TIMEOUT_S <= models.START_S["gpu"] + gib / models.PULL_BYTES_PER_S <= 3600


def test_env_accepts_the_serving_tables_variables_and_knows_those_deploy_sets():
    """--env's names are serve's table (serve/settings_table.py), SM_MODEL_DIR aside (SageMaker
    always unpacks the model at /opt/ml/model); each variable deploy.py sets itself is a row."""
    from deployment import models
    from serve.settings_table import BY_VARIABLE

    reads = models.serve_reads()
    assert {"SERVE_LOG_LEVEL", "SERVE_METRICS_NAMESPACE", "SERVE_COMPILE"} <= reads
    assert reads == set(BY_VARIABLE) - {"SM_MODEL_DIR"}
    assert set(models.OWN_VARIABLES) <= reads
    models.check_env((("SERVE_LOG_LEVEL", "debug"),))  # refuses nothing the table has


def test_env_puts_any_serving_setting_in_the_model_and_serve_checks_it_first(aws, capsys):
    """--env NAME=VALUE: a serving variable of the README's table reaches CreateModel; a value
    serve would refuse, a name serve does not read, or one deploy.py sets itself is one line
    before any AWS call (issue 40, item 5)."""
    code, out, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                         "--endpoint", "dogs-ep", "--instance-type", "ml.m5.xlarge",
                         "--env", "SERVE_COMPILE=off", "--env", "SERVE_PRECISION=fp32")
    assert code == 0, err
    env = aws.one("CreateModel")["PrimaryContainer"]["Environment"]
    assert env["SERVE_COMPILE"] == "off" and env["SERVE_PRECISION"] == "fp32"
    for option, line in [
        ("SERVE_COMPILE=maybe", "--env SERVE_COMPILE=maybe: SERVE_COMPILE='maybe'"),
        ("SERVE_COMPLIE=off", "--env SERVE_COMPLIE: serve reads no such variable; it reads "),
        ("SAGEMAKER_MODEL_SERVER_WORKERS=2", "--env SAGEMAKER_MODEL_SERVER_WORKERS: use "
                                             "--workers"),
        ("SERVE_ENDPOINT_NAME=x", "--env SERVE_ENDPOINT_NAME: deploy.py sets it"),
        ("novalue", "--env novalue: NAME=VALUE, such as SERVE_COMPILE=off"),
    ]:
        calls = sum(len(v) for v in aws.calls.values())
        code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", "s3://b/m.tar.gz",
                           "--endpoint", "dogs-ep-2", "--instance-type", "ml.m5.xlarge",
                           "--env", option)
        assert code == 1 and err.startswith(f"error: {line}"), err
        assert sum(len(v) for v in aws.calls.values()) == calls  # nothing sent


def test_the_autoscaling_target_follows_the_instance_types_vcpus():
    from deployment.autoscaling import invocations_target, vcpus

    assert [vcpus(t) for t in ("ml.t2.medium", "ml.c5.large", "ml.m5.xlarge", "ml.c5.9xlarge",
                               "ml.g5.48xlarge")] == [1, 2, 4, 36, 192]
    assert invocations_target("ml.c5.large") == 1734  # 2 x 28.9 requests/s x 0.5 x 60
    assert invocations_target("ml.c5.9xlarge") == 18 * invocations_target("ml.c5.large")
