"""Instance pools and the metrics SageMaker publishes (deployment/endpoint_config.py): deploy
writes them into the SDK's CreateEndpointConfig request, botocore validates it, update keeps
them, and the refusals come before any AWS call."""

from __future__ import annotations

import pytest

from tests.deployment.conftest import M2, endpoint, run

POOL = "ml.g6.xlarge,ml.g5.xlarge,ml.g6e.xlarge"


def test_deploy_writes_pools_in_priority_order_with_the_timeout_ami_and_metrics(aws, capsys):
    endpoint(capsys, "--instance-types", POOL, "--provision-timeout", "900",
             "--metrics-frequency", "30", monitor=False)
    request = aws.one("CreateEndpointConfig")
    (variant,) = request["ProductionVariants"]
    assert "InstanceType" not in variant  # the pools replace it
    assert variant["InstancePools"] == [
        {"InstanceType": "ml.g6.xlarge", "Priority": 1},
        {"InstanceType": "ml.g5.xlarge", "Priority": 2},
        {"InstanceType": "ml.g6e.xlarge", "Priority": 3}]
    assert variant["VariantInstanceProvisionTimeoutInSeconds"] == 900
    assert variant["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"
    assert request["MetricsConfig"] == {"EnableDetailedObservability": True,
                                        "MetricPublishFrequencyInSeconds": 30}


def test_a_default_deploy_says_its_metrics_and_one_instance_type(aws, capsys):
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--no-detailed-observability",
             monitor=False)
    request = aws.one("CreateEndpointConfig")
    assert request["MetricsConfig"] == {"EnableDetailedObservability": False,
                                        "MetricPublishFrequencyInSeconds": 60}
    (variant,) = request["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.xlarge" and "InstancePools" not in variant


@pytest.mark.parametrize("options, says", [
    (("--instance-types", "ml.g6.xlarge,ml.m5.xlarge"),
     "types need different ones (ml.g6.xlarge: al2023-ami-sagemaker-inference-gpu-4-1, "
     "ml.m5.xlarge: none (CPU))"),
    (("--instance-types", "ml.m5.xlarge,ml.c7g.xlarge"), "ml.c7g.xlarge"),
    (("--instance-types", "ml.m5.xlarge,ml.m5.xlarge"), "a type is given twice"),
    (("--instance-types", "ml.m5.large,ml.m5.xlarge,ml.m5.2xlarge,ml.c5.large,ml.c5.xlarge,"
                          "ml.c5.2xlarge"), "at most 5 instance pools"),
    (("--instance-types", "ml.m5.xlarge", "--provision-timeout", "60"), "300-3600 s"),
    (("--instance-type", "ml.m5.xlarge", "--provision-timeout", "600"),
     "--provision-timeout applies to instance pools"),
    (("--instance-type", "ml.m5.xlarge", "--metrics-frequency", "45"),
     "every 10, 30, 60, 120, 180, 240, 300 s"),
])
def test_refusals_are_one_line_before_any_aws_call(aws, capsys, options, says):
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data", M2, "--endpoint", "e",
                       *options)
    assert code == 1 and says in err and err.count("\n") == 1, err
    assert not aws.calls[("sagemaker", "CreateEndpointConfig")]


@pytest.mark.usefixtures("fake")
def test_update_keeps_the_pools_and_their_timeout_and_one_type_replaces_them(aws, capsys):
    endpoint(capsys, "--instance-types", "ml.m5.xlarge,ml.c5.xlarge", "--provision-timeout",
             "600", "--instance-count", "2", monitor=False)
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                       "--no-rollback", "--metrics-frequency", "120")
    assert code == 0, err
    kept = aws.calls[("sagemaker", "CreateEndpointConfig")][-1]
    (variant,) = kept["ProductionVariants"]
    assert [p["InstanceType"] for p in variant["InstancePools"]] == ["ml.m5.xlarge",
                                                                     "ml.c5.xlarge"]
    assert variant["VariantInstanceProvisionTimeoutInSeconds"] == 600
    assert variant["InitialInstanceCount"] == 2 and "InstanceType" not in variant
    assert kept["MetricsConfig"]["MetricPublishFrequencyInSeconds"] == 120
    # A rollback's clone of the first version keeps its pools too.
    code, _, err = run(capsys, "rollback", "--endpoint", "dogs-ep", "--no-rollback")
    assert code == 0, err
    (back,) = aws.calls[("sagemaker", "CreateEndpointConfig")][-1]["ProductionVariants"]
    assert back["InstancePools"] == variant["InstancePools"] and "InstanceType" not in back
    assert back["InitialInstanceCount"] == 2
    code, _, err = run(capsys, "update", "--model-data", M2.replace("dogs-2", "dogs-3"),
                       "--endpoint", "dogs-ep", "--no-rollback", "--instance-type",
                       "ml.c5.2xlarge")
    assert code == 0, err
    (variant,) = aws.calls[("sagemaker", "CreateEndpointConfig")][-1]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.c5.2xlarge"
    assert "InstancePools" not in variant
    assert "VariantInstanceProvisionTimeoutInSeconds" not in variant
