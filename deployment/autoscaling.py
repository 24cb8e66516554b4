"""Application Auto Scaling of an endpoint's variant: target tracking on invocations per
instance."""

from __future__ import annotations

from deployment.errors import UserError


def configure_autoscaling(boto, endpoint: str, min_count: int, max_count: int,
                          target: float) -> None:
    """Target tracking on invocations per instance for the endpoint's AllTraffic variant."""
    if max_count < min_count:
        raise UserError(f"--autoscale-max {max_count} is below --instance-count {min_count}")
    aas = boto.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/AllTraffic"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                 ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                 MinCapacity=min_count, MaxCapacity=max_count)
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target),
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
        })
    print(f"autoscaling {resource}: {min_count} to {max_count} instances, target {target:g} "
          "invocations per instance per minute")


def deregister_autoscaling(boto, endpoint: str) -> None:
    """Remove the endpoint variant's autoscaling, if any."""
    from botocore.exceptions import ClientError

    aas = boto.client("application-autoscaling")
    try:
        aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{endpoint}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount")
        print(f"removed autoscaling of {endpoint}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("ObjectNotFoundException", "ValidationException"):
            raise
