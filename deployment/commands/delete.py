"""``deploy.py delete``: the endpoint and every version of it (its endpoint configs and models);
with ``--all``, also everything else deploy.py made for the prefix (deployment/cleanup.py),
listed and confirmed first. Safe to repeat."""

from __future__ import annotations

import sys

from deployment import cleanup, cloudwatch, settings, versions
from deployment.autoscaling import deregister_autoscaling
from deployment.errors import UserError, is_not_found
from deployment.settings import Context

NAME = "delete"
HELP = ("delete the endpoint and all its versions (configs and models); --all: and the S3 "
        "prefix, the ECR repository, the logs and the local state")
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--keep-monitoring", action="store_true",
                   help="keep the endpoint's alarms and dashboard (deploy.py monitor)")
    p.add_argument("--all", action="store_true",
                   help="also delete every S3 object under s3://BUCKET/PREFIX/, the ECR "
                        "repository, the endpoint's and deploy.py's jobs' CloudWatch logs and "
                        "out/deploy_state.json, after listing them (the bucket itself is kept)")
    p.add_argument("--yes", action="store_true",
                   help="with --all: delete without asking (needed when stdin is not a terminal)")


def _confirmed(lines: list[str], yes: bool) -> bool:
    """Print what --all will delete and ask, unless ``yes``.

    Raises:
        UserError: stdin is not a terminal and ``yes`` is not given.
    """
    print("delete --all will delete:")
    for line in lines:
        print(f"  {line}")
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UserError("delete --all asks before deleting, and stdin is not a terminal; run it "
                        "in one, or add --yes")
    return input("delete all of this? [y/N] ").strip().lower() in ("y", "yes")


def run(ctx: Context, args) -> int:
    """The endpoint, then its configs, then its models: the config it runs and that config's
    models, and every config and model tagged as the endpoint's (deployment/versions.py); names
    are read first, so the order cannot lose one, and nothing untagged but the running version
    is touched. With ``--all``, then the rest of what deploy.py made (deployment/cleanup.py).
    Each missing piece is reported and skipped, so it is safe to run again."""
    from botocore.exceptions import ClientError

    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    live = False
    config = endpoint  # deploy's first config is named after the endpoint
    try:
        config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        live = True
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    tagged = versions.tagged(sm, "endpoint config", endpoint)
    configs = list(dict.fromkeys([config] + tagged))
    models = list(dict.fromkeys([m for c in configs for m in versions.models_of(sm, c)]
                                + versions.tagged(sm, "model", endpoint)))
    if args.all:
        found = cleanup.find(ctx.boto, ctx.bucket(), ctx.get("prefix"), ctx.get("repository"),
                             endpoint, settings.STATE_FILE)
        # The names read above: the live config and what ListEndpointConfigs/ListModels found.
        existing = list(dict.fromkeys(([config] if live else []) + tagged))
        lines = ([f"endpoint {endpoint}"] if live else []) + [
            f"endpoint config {c}" for c in existing] + [f"model {m}" for m in models]
        lines += found.lines()
        if not lines:
            print(f"nothing of deploy.py's is left for endpoint {endpoint} and "
                  f"s3://{found.bucket}/{found.key_prefix}")
            return 0
        if not _confirmed(lines, args.yes):
            print("nothing deleted")
            return 1
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
    if args.all:
        for line in cleanup.delete(ctx.boto, found):
            print(line)
    return 0
