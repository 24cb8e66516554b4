"""``deploy.py delete``: endpoint, endpoint config and models; safe to repeat."""

from __future__ import annotations

from deployment import cloudwatch
from deployment.autoscaling import deregister_autoscaling
from deployment.errors import is_not_found
from deployment.settings import Context

NAME = "delete"
HELP = "delete endpoint, config and model"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--keep-monitoring", action="store_true",
                   help="keep the endpoint's alarms and dashboard (deploy.py monitor)")


def run(ctx: Context, args) -> int:
    """Endpoint, then its config, then its models: names are read first, so the order cannot
    lose one. Each missing piece is reported and skipped, so it is safe to run again."""
    from botocore.exceptions import ClientError

    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    config = endpoint
    try:
        config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    models = []
    try:
        desc = sm.describe_endpoint_config(EndpointConfigName=config)
        models = [v["ModelName"] for v in desc["ProductionVariants"]]
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    deregister_autoscaling(ctx.boto, endpoint)
    if not args.keep_monitoring:
        cloudwatch.delete(ctx.boto.client("cloudwatch"), endpoint)
    steps = [("endpoint", endpoint, lambda: sm.delete_endpoint(EndpointName=endpoint)),
             ("endpoint config", config,
              lambda: sm.delete_endpoint_config(EndpointConfigName=config))]
    steps += [("model", m, lambda m=m: sm.delete_model(ModelName=m)) for m in models]
    for what, name, call in steps:
        try:
            call()
            print(f"deleted {what} {name}")
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            print(f"{what} {name}: already gone")
    return 0
