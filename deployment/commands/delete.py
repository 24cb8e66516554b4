"""``deploy.py delete``: the endpoint and every version of it (its endpoint configs and models);
safe to repeat."""

from __future__ import annotations

from deployment import cloudwatch, versions
from deployment.autoscaling import deregister_autoscaling
from deployment.errors import is_not_found
from deployment.settings import Context

NAME = "delete"
HELP = "delete the endpoint and all its versions (configs and models)"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--keep-monitoring", action="store_true",
                   help="keep the endpoint's alarms and dashboard (deploy.py monitor)")


def run(ctx: Context, args) -> int:
    """The endpoint, then its configs, then its models: the config it runs and that config's
    models, and every config and model tagged as the endpoint's (deployment/versions.py); names
    are read first, so the order cannot lose one, and nothing untagged but the running version
    is touched. Each missing piece is reported and skipped, so it is safe to run again."""
    from botocore.exceptions import ClientError

    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    config = endpoint  # deploy's first config is named after the endpoint
    try:
        config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    configs = list(dict.fromkeys([config] + versions.tagged(sm, "endpoint config", endpoint)))
    models = list(dict.fromkeys([m for c in configs for m in versions.models_of(sm, c)]
                                + versions.tagged(sm, "model", endpoint)))
    deregister_autoscaling(ctx.boto, endpoint)
    if not args.keep_monitoring:
        cloudwatch.delete(ctx.boto.client("cloudwatch"), endpoint)
    try:
        sm.delete_endpoint(EndpointName=endpoint)
        print(f"deleted endpoint {endpoint}")
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        print(f"endpoint {endpoint}: already gone")
    for line in versions.remove(sm, configs, models):
        print(line)
    return 0
