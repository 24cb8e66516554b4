"""``deploy.py rollback``: the endpoint back to the version it ran before (the endpoint config
its current one records as replaced), with the same strategies and alarms as ``update``."""

from __future__ import annotations

from deployment import guardrails, versions
from deployment.errors import UserError, is_not_found
from deployment.settings import Context
from deployment.updates import begin, follow, read_current, rollback_alarms

NAME = "rollback"
HELP = "the endpoint back to its previous version (same strategies as update)"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options: the strategy and --no-wait."""
    guardrails.add_strategy_arguments(p)
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="start the rollback and return, without following it")


def run(ctx: Context, args) -> int:
    """Deploy the previous endpoint config; once it serves, the config left becomes its
    previous one, so a second rollback goes forward again."""
    options = guardrails.StrategyOptions.from_args(args)
    guardrails.check_values(options, args.alarm)
    if args.alarm and args.no_rollback:
        raise UserError("--alarm and --no-rollback exclude each other: pick one")
    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    current = read_current(sm, endpoint)
    left = current.config["EndpointConfigName"]
    target = versions.previous_config(sm, left)
    if not target:
        raise UserError(f"endpoint {endpoint} runs {left}, which records no previous version "
                        "(only configs made by python deploy.py update do): nothing to go back to")
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_endpoint_config(EndpointConfigName=target)
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        raise UserError(f"endpoint {endpoint}'s previous version {target} is gone (deleted "
                        "outside deploy.py): nothing to go back to") from exc
    (variant,) = desc["ProductionVariants"]
    serverless = "ServerlessConfig" in variant
    plan = guardrails.plan(options, None if serverless else variant["InitialInstanceCount"],
                           serverless)
    alarms = rollback_alarms(ctx, endpoint, args)
    begin(ctx, endpoint, left, target, plan, alarms)
    # Once target serves, the config left is the one before it (whether or not this run waits;
    # if the rollback is itself rolled back, left serves on and still records target).
    versions.set_previous(sm, target, left)
    return follow(ctx, endpoint, left, target, plan, alarms, args.wait)
