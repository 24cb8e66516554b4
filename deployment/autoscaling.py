"""Application Auto Scaling of an endpoint's variant: target tracking on invocations per
instance (real-time), or on the queue per instance with a step from zero (asynchronous).

Asynchronous endpoints (AWS developer guide, "Autoscale an asynchronous endpoint"): target
tracking on ApproximateBacklogSizePerInstance scales between the minimum and the maximum, but it
cannot start the first instance when there are none (a backlog per instance of zero instances
is no number); a step-scaling policy does, set off by a CloudWatch alarm on
HasBacklogWithoutCapacity (1 while requests wait and no instance runs).
"""

from __future__ import annotations

from deployment.errors import UserError

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# The most requests per second one vCPU answered: 57.8 at concurrency 16 on a 2-vCPU AMD EPYC
# (benchmarks/README.md, "Throughput per vCPU"). GPU types are not measured: their vCPUs give a
# floor.
MEASURED_REQUESTS_PER_VCPU_S = 57.8 / 2
# AWS's rule for the target of SageMakerVariantInvocationsPerInstance (a per-minute metric):
# the highest load-tested requests per second x 0.5 x 60 (SageMaker Developer Guide, "Load
# testing your auto scaling configuration").
SAFETY_FACTOR = 0.5
BACKLOG_TARGET = 5.0  # queued requests per instance: AWS's example value
# Cooldowns (s): scale out fast, in slowly, as AWS's async example does.
SCALE_IN_COOLDOWN_S, SCALE_OUT_COOLDOWN_S = 600, 300


def vcpus(instance_type: str) -> int:
    """The vCPUs of an ``ml.FAMILY.SIZE`` type by AWS's size names: medium 1, large 2, xlarge 4,
    Nxlarge 4N (ml.t2.medium has 2; the rule is a floor)."""
    size = instance_type.rsplit(".", 1)[-1]
    if size == "medium":
        return 1
    if size == "large":
        return 2
    multiple = size.removesuffix("xlarge")
    return 4 * (int(multiple) if multiple.isdigit() else 1)


def invocations_target(instance_type: str) -> float:
    """The default target of SageMakerVariantInvocationsPerInstance for ``instance_type``, in
    invocations per instance per minute: the measured requests/s of its vCPUs x SAFETY_FACTOR
    x 60."""
    return round(vcpus(instance_type) * MEASURED_REQUESTS_PER_VCPU_S * SAFETY_FACTOR * 60)


def resource_id(endpoint: str) -> str:
    """The variant's Application Auto Scaling resource id."""
    return f"endpoint/{endpoint}/variant/AllTraffic"


def wake_alarm_name(endpoint: str) -> str:
    """The alarm that starts an asynchronous endpoint's first instance."""
    return f"{endpoint}-has-backlog-without-capacity"


def _track(boto, endpoint: str, min_count: int, max_count: int, suffix: str, target: float,
           metric: dict, cooldowns: tuple[int, int]):
    """Register the variant's range and put its target-tracking policy ``ENDPOINT-suffix`` on
    ``metric`` (a predefined or customized metric specification); ``cooldowns``: scale in,
    scale out (s). Returns the Application Auto Scaling client."""
    aas = boto.client("application-autoscaling")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
                                 ScalableDimension=DIMENSION, MinCapacity=min_count,
                                 MaxCapacity=max_count)
    _put_policy(aas, endpoint, suffix, PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    "TargetValue": float(target), **metric,
                    "ScaleInCooldown": cooldowns[0], "ScaleOutCooldown": cooldowns[1]})
    return aas


def _put_policy(aas, endpoint: str, suffix: str, **policy) -> dict:
    """PutScalingPolicy ``ENDPOINT-suffix`` on the endpoint's variant (replaces one of that
    name); ``policy``: PolicyType and its configuration."""
    return aas.put_scaling_policy(PolicyName=f"{endpoint}-{suffix}", ServiceNamespace="sagemaker",
                                  ResourceId=resource_id(endpoint), ScalableDimension=DIMENSION,
                                  **policy)


def configure_autoscaling(boto, endpoint: str, min_count: int, max_count: int,
                          target: float) -> None:
    """Target tracking on invocations per instance for the endpoint's AllTraffic variant.

    Raises:
        UserError: a maximum below the minimum.
    """
    if max_count < min_count:
        raise UserError(f"--autoscale-max {max_count} is below --instance-count {min_count}")
    _track(boto, endpoint, min_count, max_count, "invocations", target, {
        "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}, (300, 60))
    print(f"autoscaling {resource_id(endpoint)}: {min_count} to {max_count} instances, target "
          f"{target:g} invocations per instance per minute")


def configure_async_autoscaling(boto, endpoint: str, min_count: int, max_count: int,
                                backlog: float) -> None:
    """An asynchronous endpoint's autoscaling: target tracking on its queue per instance
    (``backlog`` requests), and with ``min_count`` 0 the step from zero: a step-scaling policy
    adding one instance, set off by an alarm on HasBacklogWithoutCapacity (two minutes of 1)."""
    aas = _track(boto, endpoint, min_count, max_count, "backlog", backlog, {
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
            "Statistic": "Average"}}, (SCALE_IN_COOLDOWN_S, SCALE_OUT_COOLDOWN_S))
    woken = ""
    if min_count == 0:
        policy = _put_policy(
            aas, endpoint, "wake-from-zero", PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                "Cooldown": SCALE_OUT_COOLDOWN_S,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            })
        boto.client("cloudwatch").put_metric_alarm(
            AlarmName=wake_alarm_name(endpoint),
            AlarmDescription=f"requests wait for {endpoint} and it has no instance: start one",
            Namespace="AWS/SageMaker", MetricName="HasBacklogWithoutCapacity",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}], Statistic="Average",
            Period=60, EvaluationPeriods=2, DatapointsToAlarm=2, Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing",
            AlarmActions=[policy["PolicyARN"]])
        woken = f"; from zero on alarm {wake_alarm_name(endpoint)}"
    print(f"autoscaling {resource_id(endpoint)}: {min_count} to {max_count} instances, target "
          f"{backlog:g} queued requests per instance{woken}")


def registered(boto, endpoint: str) -> bool:
    """Whether the endpoint's variant has autoscaling (a scalable target) registered."""
    aas = boto.client("application-autoscaling")
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                            ResourceIds=[resource_id(endpoint)],
                                            ScalableDimension=DIMENSION)
    return bool(targets.get("ScalableTargets"))


def deregister_autoscaling(boto, endpoint: str) -> None:
    """Remove the endpoint variant's autoscaling (its policies go with it) and the alarm that
    wakes an asynchronous one from zero, if any."""
    from botocore.exceptions import ClientError

    aas = boto.client("application-autoscaling")
    try:
        aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=resource_id(endpoint),
            ScalableDimension=DIMENSION)
        print(f"removed autoscaling of {endpoint}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("ObjectNotFoundException", "ValidationException"):
            raise
    cw = boto.client("cloudwatch")
    if cw.describe_alarms(AlarmNames=[wake_alarm_name(endpoint)])["MetricAlarms"]:
        cw.delete_alarms(AlarmNames=[wake_alarm_name(endpoint)])
        print(f"deleted alarm {wake_alarm_name(endpoint)}")
