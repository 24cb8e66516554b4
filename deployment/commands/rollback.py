"""``deploy.py rollback``: the endpoint back to the version it ran before (the endpoint config
its current one records as replaced), with the same strategies and alarms as ``update``."""

from __future__ import annotations

from deployment import guardrails, versions
from deployment.errors import UserError, is_not_found
from deployment.options import RollbackOptions
from deployment.settings import Context
from deployment.updates import (begin, config_request, follow, read_current, rollback_alarms,
                                undone_unless_taken, validate, variant_fields)

NAME = "rollback"
HELP = "the endpoint back to its previous version (same strategies as update)"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options: the strategy and --no-wait."""
    guardrails.add_strategy_arguments(p)
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="start the rollback and return, without following it")


def run(ctx: Context, args) -> int:
    """Deploy the previous version again: a clone of its endpoint config at the instance count
    the endpoint runs now (``clone_at_live_count``), recording the config left as its previous
    one, so a second rollback goes forward again."""
    options = guardrails.StrategyOptions.from_args(args)
    rollback = RollbackOptions.from_args(args)
    guardrails.check_values(options, list(rollback.alarms))
    if rollback.alarms and rollback.no_rollback:
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
    name, request = clone_at_live_count(sm, desc, current, endpoint, left)
    (variant,) = request["ProductionVariants"]
    serverless = "ServerlessConfig" in variant
    plan = guardrails.plan(options, None if serverless else variant["InitialInstanceCount"],
                           serverless)
    alarms = rollback_alarms(ctx, endpoint, rollback)
    validate(sm, "CreateEndpointConfig", request)
    # The model is the target's, the previous version's own: only the clone goes.
    with undone_unless_taken(sm, endpoint, name, [name], [], "rollback"):
        sm.create_endpoint_config(**request)
        begin(ctx, endpoint, left, name, plan, alarms)
    print(f"{name}: {target}'s model and settings"
          + ("" if serverless else f" on the {variant['InitialInstanceCount']} instance(s) the "
             "endpoint runs now"))
    return follow(ctx, endpoint, left, name, plan, alarms, args.wait)


def clone_at_live_count(sm, target: dict, current, endpoint: str, left: str
                        ) -> tuple[str, dict]:
    """CreateEndpointConfig's request for a rollback: the ``target`` config (its description)
    under a new name, tagged as replacing ``left``, with the instance count the endpoint runs
    now (``current.instance_count``: autoscaling may have grown it since ``target`` ran).
    Deploying ``target`` as stored would shrink the fleet to its old count in the middle of an
    incident; UpdateEndpoint's RetainAllVariantProperties is not used, since the API reference
    does not say how it combines with a DeploymentConfig."""
    name = versions.new_name(endpoint)
    (variant,) = target["ProductionVariants"]
    variant = variant_fields(sm, variant)
    if "ServerlessConfig" not in variant and current.instance_count:
        variant["InitialInstanceCount"] = current.instance_count
    return name, config_request(sm, target, name, variant, endpoint, previous=left)
