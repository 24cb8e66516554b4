"""A new model version behind an existing endpoint (``deploy.py update``, and ``deploy --update``,
which is the same with the default strategy), and the steps ``rollback`` shares with it.

The new version is a model and an endpoint config cloned from the endpoint's current ones:
instance type and count (the count the endpoint runs now, autoscaled or not), variant name,
data capture, serverless and asynchronous settings, the AMI, the serving environment, VPC and
network isolation are kept unless an option changes them. Both requests are validated against
botocore's model before the first is sent, and whatever this run created is deleted again if a
later step fails, so a refused or failed update leaves nothing behind. The same update twice
changes nothing the second time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from deployment import (cloudwatch, ecr, endpoint_config, guardrails, models, rollout,
                        versions)
from deployment.errors import UserError, is_not_found
from deployment.options import RollbackOptions, UpdateOptions, VariantOptions
from deployment.settings import Context, save_state

# ProductionVariant fields a serverless variant keeps; the others are about instances.
SERVERLESS_FIELDS = ("VariantName", "ModelName", "InitialVariantWeight", "ServerlessConfig")


@dataclass
class Current:
    """What the endpoint runs: DescribeEndpoint (``desc``), its config, its one production
    variant and that variant's model (DescribeModel)."""

    desc: dict
    config: dict
    variant: dict
    model: dict

    @property
    def serverless(self) -> bool:
        return "ServerlessConfig" in self.variant

    @property
    def instance_count(self) -> int | None:
        """The instances it runs now (autoscaling may have changed its config's count)."""
        if self.serverless:
            return None
        live = (self.desc.get("ProductionVariants") or [{}])[0].get("CurrentInstanceCount")
        return live or self.variant.get("InitialInstanceCount")


def read_current(sm, endpoint: str) -> Current:
    """The endpoint's current version.

    Raises:
        UserError: no such endpoint, one that is not InService, or one with several variants.
    """
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if is_not_found(exc):
            raise UserError(f"endpoint {endpoint} does not exist: create it with python deploy.py "
                            "deploy, or check --endpoint and --region") from exc
        raise
    rollout.check_updatable(desc)
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    variants = config["ProductionVariants"] + config.get("ShadowProductionVariants", [])
    if len(variants) != 1:
        raise UserError(f"endpoint {endpoint} has {len(variants)} production variants ("
                        + ", ".join(v["VariantName"] for v in variants) + "): deploy.py updates "
                        "the model of a one-variant endpoint")
    model = sm.describe_model(ModelName=variants[0]["ModelName"])
    return Current(desc, config, variants[0], model)


def check_options(o: UpdateOptions) -> guardrails.StrategyOptions:
    """Every rule the options alone decide, before any AWS call: the strategy's, the count
    dependent ones when --instance-count or --serverless states the shape, the instance type's
    and AMI's, and serve's for the serving options.

    Raises:
        UserError: one line naming the option and the rule.
    """
    options, v = o.strategy, o.variant
    guardrails.check_values(options, list(o.rollback.alarms))
    if o.rollback.alarms and o.rollback.no_rollback:
        raise UserError("--alarm and --no-rollback exclude each other: pick one")
    if o.asynchronous:
        raise UserError("--async: an update keeps the endpoint's kind (real-time or "
                        "asynchronous); create an asynchronous endpoint with deploy --async")
    if v.serverless:
        for option, value in (("--instance-type", v.instance_type),
                              ("--instance-count", v.instance_count),
                              ("--startup-timeout", v.startup_timeout)):
            if value is not None:
                raise UserError(f"{option} and --serverless exclude each other: a serverless "
                                "endpoint has no instances")
    if v.instance_count is not None and v.instance_count < 1:
        raise UserError(f"--instance-count {v.instance_count}: at least 1")
    if v.serverless or v.instance_count is not None:
        guardrails.plan(options, v.instance_count, v.serverless)
    if v.instance_type or v.serverless:
        models.inference_ami(None if v.serverless else v.instance_type,
                             v.inference_ami_version or "auto")
    models.check_capture(v.capture)
    models.serving_environment(o.serving, {})
    return options


def check_autoscaled_instance_type(ctx: Context, current: Current, variant: VariantOptions,
                                   endpoint: str) -> None:
    """Refuse, before anything is created, an update that changes the instance type of a
    variant with autoscaling registered: SageMaker refuses that UpdateEndpoint until the
    variant is deregistered as a scalable target (SageMaker Developer Guide, "Update or delete
    an endpoint that uses auto scaling"), and the model and config would be made for nothing.

    Raises:
        UserError: the instance type changes and autoscaling is registered (with the commands
            that deregister it and register it again).
    """
    wanted = variant.instance_type or variant.instance_types
    now = current.variant.get("InstanceType") or ",".join(pool_types(current.variant))
    if not wanted or wanted.replace(" ", "") == now:
        return
    from deployment.autoscaling import DIMENSION, registered, resource_id

    if registered(ctx.boto, endpoint):
        raise UserError(
            f"{'--instance-type' if variant.instance_type else '--instance-types'} {wanted}: "
            f"endpoint {endpoint} has autoscaling, and SageMaker "
            "refuses to change an autoscaled variant's instance type. Remove it first (aws "
            "application-autoscaling deregister-scalable-target --service-namespace sagemaker "
            f"--resource-id {resource_id(endpoint)} --scalable-dimension {DIMENSION}), then run "
            "python deploy.py deploy --update with --instance-type, --instance-count and "
            "--autoscale-max to update and register it again")


def variant_fields(sm, variant: dict) -> dict:
    """A described production variant's fields that CreateEndpointConfig takes back."""
    members = sm.meta.service_model.shape_for("ProductionVariant").members
    return {k: value for k, value in variant.items() if k in members}


def config_request(sm, config: dict, name: str, variant: dict, endpoint: str, previous: str
                   ) -> dict:
    """CreateEndpointConfig's request: a described ``config``'s settings under ``name`` with
    the one production ``variant``, tagged with ``endpoint`` and the config it replaces
    (``previous``)."""
    members = sm.meta.service_model.operation_model("CreateEndpointConfig").input_shape.members
    request = {k: v for k, v in config.items() if k in members and v not in (
        None, {}, []) and k not in ("EndpointConfigName", "ProductionVariants",
                                    "ShadowProductionVariants", "Tags")}
    request.update(EndpointConfigName=name, ProductionVariants=[variant],
                   Tags=versions.tags(endpoint, previous=previous))
    return request


def desired_variant(sm, current: Current, shape: VariantOptions, model_name: str) -> dict:
    """The new production variant: the current one with the new model and the options given.

    Raises:
        UserError: an option that does not fit the endpoint's kind.
    """
    v = variant_fields(sm, current.variant)
    v["ModelName"] = model_name
    to_instances = current.serverless and shape.instance_type
    if shape.serverless or (current.serverless and not to_instances):
        for option, value in (("--instance-count", shape.instance_count),
                              ("--startup-timeout", shape.startup_timeout)):
            if value is not None:
                raise UserError(f"{option}: endpoint {current.desc['EndpointName']} is "
                                "serverless; pass --instance-type to move it to instances")
        config = dict(v.get("ServerlessConfig") or {
            "MemorySizeInMB": models.DEFAULT_MEMORY_MB,
            "MaxConcurrency": models.DEFAULT_MAX_CONCURRENCY})
        if shape.memory_mb is not None:
            config["MemorySizeInMB"] = shape.memory_mb
        if shape.max_concurrency is not None:
            config["MaxConcurrency"] = shape.max_concurrency
        v = {k: value for k, value in v.items() if k in SERVERLESS_FIELDS}
        v["ServerlessConfig"] = config
        if shape.inference_ami_version:
            models.inference_ami(None, shape.inference_ami_version)  # refused: no GPU
        return v
    for option in ("memory_mb", "max_concurrency"):
        if getattr(shape, option) is not None:
            raise UserError(f"--{option.replace('_', '-')}: applies to serverless endpoints; "
                            f"endpoint {current.desc['EndpointName']} runs instances (add "
                            "--serverless to move it)")
    v.pop("ServerlessConfig", None)
    v = _instances(v, shape)
    v["InitialInstanceCount"] = (shape.instance_count or current.instance_count
                                 or models.DEFAULT_INSTANCE_COUNT)
    if shape.startup_timeout is not None or to_instances:
        v["ContainerStartupHealthCheckTimeoutInSeconds"] = (shape.startup_timeout or
                                                            models.DEFAULT_STARTUP_TIMEOUT_S)
    if shape.instance_type or shape.instance_types or shape.inference_ami_version:
        requested = shape.inference_ami_version or "auto"
        ami = (endpoint_config.pools_ami(pool_types(v), requested) if "InstancePools" in v
               else models.inference_ami(v["InstanceType"], requested))
        v.pop("InferenceAmiVersion", None)
        if ami:
            v["InferenceAmiVersion"] = ami
    return v


def pool_types(variant: dict) -> list[str]:
    """A variant's pooled instance types in priority order ([] for one instance type)."""
    pools = sorted(variant.get("InstancePools") or [], key=lambda p: p["Priority"])
    return [p["InstanceType"] for p in pools]


def _instances(v: dict, shape: VariantOptions) -> dict:
    """The variant's instance type or pools: --instance-type replaces pools with one type,
    --instance-types replaces either with pools, neither keeps what the endpoint has.

    Raises:
        UserError: both options, or --provision-timeout on a variant without pools.
    """
    types = endpoint_config.parse_types(shape.instance_types)
    if types and shape.instance_type:
        raise UserError("--instance-type and --instance-types exclude each other: one type, or "
                        "pools of several")
    if shape.instance_type:
        v = {k: value for k, value in v.items()
             if k not in ("InstancePools", "VariantInstanceProvisionTimeoutInSeconds")}
        v["InstanceType"] = shape.instance_type
    elif types or "InstancePools" in v:
        v = endpoint_config.pooled(v, types or pool_types(v), shape.provision_timeout)
    if shape.provision_timeout is not None and "InstancePools" not in v:
        raise UserError("--provision-timeout applies to instance pools: add --instance-types")
    return v


def desired_model(ctx: Context, current: Current, o: UpdateOptions, endpoint: str, name: str
                  ) -> tuple[dict, str | None]:
    """CreateModel's request for the new version (the current model's container with the new
    image, model data and environment) and the image's ECR digest."""
    sm = ctx.session.sagemaker_client
    image = ctx.image(check=False)
    digest = ecr.check_ecr_image(ctx.boto, image)
    members = sm.meta.service_model.shape_for("ContainerDefinition").members
    container = {k: v for k, v in current.model.get("PrimaryContainer", {}).items()
                 if k in members and k != "ModelDataSource"}
    container.update(Image=image, ModelDataUrl=models.model_data_uri(ctx, o.artifact),
                     Environment=models.serving_environment(
                         o.serving, current.model.get("PrimaryContainer", {}).get("Environment")
                         or models.base_environment(endpoint, current.variant["VariantName"])))
    request = {"ModelName": name, "PrimaryContainer": container,
               "ExecutionRoleArn": ctx.role() if ctx.get("role") else
               current.model["ExecutionRoleArn"], "Tags": versions.tags(endpoint)}
    for key in ("VpcConfig", "EnableNetworkIsolation"):
        if current.model.get(key) not in (None, {}):
            request[key] = current.model[key]
    return request, digest


def desired_config(ctx: Context, current: Current, shape: VariantOptions, endpoint: str,
                   name: str, variant: dict) -> dict:
    """CreateEndpointConfig's request: the current config's settings with the new variant,
    data capture (--capture) and metrics (--metrics-frequency, --no-detailed-observability),
    tagged with the endpoint and the config it replaces."""
    request = config_request(ctx.session.sagemaker_client, current.config, name, variant,
                             endpoint, current.config["EndpointConfigName"])
    if shape.capture is not None:
        request["DataCaptureConfig"] = models.data_capture(ctx, endpoint,
                                                           shape.capture)._to_request_dict()
    if shape.metrics_frequency is not None or shape.no_detailed_observability:
        now = current.config.get("MetricsConfig") or {}
        request["MetricsConfig"] = dict(now, **endpoint_config.metrics_config(
            shape.metrics_frequency or now.get("MetricPublishFrequencyInSeconds"),
            not shape.no_detailed_observability and now.get("EnableDetailedObservability",
                                                            True)))
    return request


def unchanged(current: Current, model: dict, config: dict, digest: str | None) -> bool:
    """Whether the endpoint already runs this version: the same container, role, variant
    (but for the model's name), config settings, and image digest when SageMaker reports it."""
    def container(c: dict) -> tuple:
        return c.get("Image"), c.get("ModelDataUrl"), c.get("Environment") or {}

    if container(model["PrimaryContainer"]) != container(current.model["PrimaryContainer"]) or \
            model["ExecutionRoleArn"] != current.model["ExecutionRoleArn"]:
        return False
    (variant,) = config["ProductionVariants"]
    skip = ("EndpointConfigName", "ProductionVariants", "Tags")
    if {k: v for k, v in variant.items() if k != "ModelName"} != \
            {k: v for k, v in current.variant.items() if k != "ModelName" and k in variant} or \
            any(current.config.get(k) != v for k, v in config.items() if k not in skip):
        return False
    deployed = [i.get("ResolvedImage", "") for v in current.desc.get("ProductionVariants", [])
                for i in v.get("DeployedImages", [])]
    return not (digest and deployed and not all(d.endswith(digest) for d in deployed))


def rollback_alarms(ctx: Context, endpoint: str, rollback: RollbackOptions) -> list[str]:
    """The alarms the deployment rolls back on: the endpoint's error-rate and latency alarms
    from ``monitor`` that exist, and each --alarm ([] with --no-rollback).

    Raises:
        UserError: an --alarm that does not exist, more than 10, or none at all.
    """
    if rollback.no_rollback:
        return []
    given = list(dict.fromkeys(rollback.alarms))
    defaults = cloudwatch.rollback_alarm_names(endpoint)
    existing = cloudwatch.existing_alarms(ctx.boto.client("cloudwatch"), defaults + given)
    for name in given:
        if name not in existing:
            raise UserError(f"--alarm {name}: no such CloudWatch alarm in {ctx.region}")
    names = [d for d in defaults if d in existing and d not in given] + given
    firing = [n for n in names if existing[n] == "ALARM"]
    if firing:
        raise UserError(f"alarm {firing[0]} is in ALARM now, so SageMaker would roll the update "
                        "back at once: wait until it clears, or pass --no-rollback (to ship the "
                        "fix for what it reports)")
    if not names:
        raise UserError(f"no alarms to roll back on: endpoint {endpoint} has none from deploy.py "
                        f"monitor ({', '.join(defaults)}); run python deploy.py monitor first, "
                        "pass --alarm NAME, or --no-rollback to update without")
    if len(names) > guardrails.MAX_ALARMS:
        raise UserError(f"--alarm: {len(names)} alarms with the endpoint's own, SageMaker rolls "
                        f"back on at most {guardrails.MAX_ALARMS} (AutoRollbackConfiguration)")
    return names


def validate(sm, operation: str, params: dict) -> None:
    """botocore's own validation of a request, before anything is sent (so that a bad value
    found in a later request cannot leave the earlier one's resource behind).

    Raises:
        botocore.exceptions.ParamValidationError: the request breaks the API's shapes.
    """
    from botocore.validate import validate_parameters

    validate_parameters(params, sm.meta.service_model.operation_model(operation).input_shape)


def begin(ctx: Context, endpoint: str, left: str, target: str, plan: guardrails.Plan,
          alarms: list[str]) -> None:
    """UpdateEndpoint from config ``left`` to ``target`` with ``plan`` and ``alarms``."""
    rollout.start(ctx.session.sagemaker_client, endpoint, target,
                  guardrails.with_alarms(plan.deployment_config, alarms))
    print(f"endpoint {endpoint}: {left} -> {target}, {plan.summary}; "
          + (f"rolls back on {', '.join(alarms)}" if alarms else "no automatic rollback"))


@contextmanager
def undone_unless_taken(sm, endpoint: str, name: str, configs: list[str], models: list[str],
                        verb: str):
    """Around the creates and the UpdateEndpoint to config ``name``: if they fail or are
    interrupted, delete what this run made (``configs``, ``models``: lists the body fills in)
    unless SageMaker took the update after all (a retried request whose first answer was lost:
    the endpoint runs or deploys ``name``). Then an error is swallowed, so that the caller
    follows the update as started; an interrupt still ends the run, nothing deleted."""
    try:
        yield
    except BaseException as exc:
        try:
            live = versions.in_use(sm, endpoint)
        except Exception as describe:  # noqa: BLE001 - unknown: keeping a version loses nothing
            print(f"{verb}: could not tell whether {endpoint} took {name} ({describe}); kept "
                  f"{', '.join(configs + models) or 'nothing'}: python deploy.py delete or the "
                  "next update removes them")
            live = None
        if live is None:
            raise
        if name not in live:
            for line in versions.remove(sm, configs, models):
                print(f"{line} (this {verb} did not start)")
            raise
        print(f"{verb}: the request to SageMaker failed, but endpoint {endpoint} deploys "
              f"{name}: following it")
        if not isinstance(exc, Exception):
            raise


def follow(ctx: Context, endpoint: str, left: str, target: str, plan: guardrails.Plan,
           alarms: list[str], wait: bool) -> int:
    """Watch the deployment ``begin`` started (unless not ``wait``), then prune to the version
    serving and the one before it, say what is kept, and return the exit code (0 done or not
    waited for, 2 rolled back, 3 still running past our limit, 1 failed)."""
    sm = ctx.session.sagemaker_client
    if not wait:
        print(f"started; SageMaker goes on with it (update and rollback refuse until {endpoint} "
              "is InService again)")
        return 0
    outcome = rollout.watch(sm, ctx.boto.client("cloudwatch"), endpoint, target, alarms,
                            plan.timeout_s + rollout.ROLLBACK_ROOM_S)
    if outcome in (rollout.DONE, rollout.ROLLED_BACK):
        serving = target if outcome == rollout.DONE else left
        before = left if outcome == rollout.DONE else versions.previous_config(sm, left)
        keep = [c for c in (serving, before) if c]
        own = (target,) if outcome == rollout.ROLLED_BACK else ()
        for line in versions.prune(sm, endpoint, keep, replaced=left, own=own):
            print(line)
        print(f"kept {len(keep)} version(s) of {endpoint}: {serving} (serving)"
              + (f", {before} (python deploy.py rollback goes back to it)" if before else ""))
    return rollout.EXIT_CODES[outcome]


def update_model(ctx: Context, o: UpdateOptions) -> int:
    """``deploy.py update``: a new version cloned from the current one, deployed with the
    strategy's guardrails, watched unless --no-wait, then pruned to ``versions.KEEP``.

    Returns the exit code (``follow``'s; 0 when the endpoint already runs it).

    Raises:
        UserError: a rule broken (before any AWS call when the options alone break it).
    """
    options = check_options(o)
    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    current = read_current(sm, endpoint)
    check_autoscaled_instance_type(ctx, current, o.variant, endpoint)
    name = versions.new_name(endpoint)
    variant = desired_variant(sm, current, o.variant, name)
    model, digest = desired_model(ctx, current, o, endpoint, name)
    if "ServerlessConfig" not in variant:
        # A model that carries compiled programs is larger: give its download the time it needs.
        container = model["PrimaryContainer"]
        _, download = models.startup_timeouts(ctx.boto, container["Image"],
                                              container["ModelDataUrl"],
                                              gpu="InferenceAmiVersion" in variant)
        if download > variant.get("ModelDataDownloadTimeoutInSeconds", 600):
            variant["ModelDataDownloadTimeoutInSeconds"] = download
    config = desired_config(ctx, current, o.variant, endpoint, name, variant)
    serverless = "ServerlessConfig" in variant
    plan = guardrails.plan(options, variant.get("InitialInstanceCount"), serverless)
    old = current.config["EndpointConfigName"]
    if unchanged(current, model, config, digest):
        print(f"endpoint {endpoint} already runs {model['PrimaryContainer']['ModelDataUrl']} with "
              f"these settings ({old}); nothing done")
        return 0
    alarms = rollback_alarms(ctx, endpoint, o.rollback)
    validate(sm, "CreateModel", model)
    validate(sm, "CreateEndpointConfig", config)
    made_models, made_configs = [], []
    with undone_unless_taken(sm, endpoint, name, made_configs, made_models, "update"):
        sm.create_model(**model)
        made_models.append(name)
        sm.create_endpoint_config(**config)
        made_configs.append(name)
        begin(ctx, endpoint, old, name, plan, alarms)
    save_state(endpoint=endpoint, model=name)
    print(f"model {name}: {model['PrimaryContainer']['ModelDataUrl']} ("
          + (f"serverless, {variant['ServerlessConfig']['MemorySizeInMB']} MB" if serverless else
             f"{variant['InitialInstanceCount']} x "
             f"{variant.get('InstanceType') or ' or '.join(pool_types(variant))}"
             + (f", InferenceAmiVersion {variant['InferenceAmiVersion']}"
                if variant.get("InferenceAmiVersion") else "")) + ")")
    return follow(ctx, endpoint, old, name, plan, alarms, o.wait)
