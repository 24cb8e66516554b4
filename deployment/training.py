"""SageMaker training and tuning jobs: the job's channels, the generic Estimator of our image
(metric definitions, managed spot, the debugger's settings), the GPU check before a job, and the
hyperparameters of a tuning job's best job."""

from __future__ import annotations

import contextlib

from container import gpu_hosts
from deployment.errors import UserError
from deployment.options import TrainingLimits
from deployment.requests import adding
from deployment.settings import SPLITS, Context
from train.hyperparameters import IGNORED_PREFIXES
from train.metrics import METRIC_DEFINITIONS


def data_channels(ctx: Context, data: str | None, pretrained: str | None) -> dict:
    """The job's channels: train, valid and test under ``data`` (default s3://BUCKET/PREFIX/
    data), and ``pretrained`` when given."""
    from sagemaker.inputs import TrainingInput

    base = (data or f"{ctx.s3_prefix()}/data").rstrip("/")
    channels = {s: TrainingInput(f"{base}/{s}", distribution="FullyReplicated") for s in SPLITS}
    if pretrained:
        channels["pretrained"] = TrainingInput(pretrained, distribution="FullyReplicated")
    return channels


def debugger_settings(ctx: Context, job_prefix: str) -> dict:
    """Hook, built-in rules and profiler for accounts that still have the Debugger service.

    Each rule names the collections it reads, so the SDK adds no default collections."""
    from sagemaker.debugger import (CollectionConfig, DebuggerHookConfig, ProfilerConfig,
                                    ProfilerRule, Rule, rule_configs)

    losses = CollectionConfig(name="losses", parameters={"save_interval": "10"})
    gradients = CollectionConfig(name="gradients", parameters={"save_interval": "50"})
    weights = CollectionConfig(name="weights", parameters={"save_interval": "50"})
    hook = DebuggerHookConfig(s3_output_path=f"{ctx.s3_prefix()}/debug/{job_prefix}",
                              collection_configs=[losses, gradients, weights])
    rules = [
        Rule.sagemaker(rule_configs.loss_not_decreasing(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.overfit(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.overtraining(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.vanishing_gradient(), collections_to_save=[gradients]),
        Rule.sagemaker(rule_configs.poor_weight_initialization(), collections_to_save=[weights]),
        ProfilerRule.sagemaker(rule_configs.ProfilerReport()),
    ]
    profiler = ProfilerConfig(s3_output_path=f"{ctx.s3_prefix()}/profiler/{job_prefix}",
                              system_monitor_interval_millis=500)
    return {"debugger_hook_config": hook, "rules": rules, "profiler_config": profiler,
            "disable_profiler": False}


def training_instance_warning(instance_type: str) -> str | None:
    """Before a training or tuning job, with no AWS call: refuse a GPU instance type the image
    cannot run on; for the others, the warning that the training fleet's driver is unknown
    (None on CPU instance types), for the caller to print once the job's inputs are checked.

    Raises:
        UserError: a GPU the image has no kernels for, or a GPU family container/gpu_hosts.py
            does not know.
    """
    try:
        return gpu_hosts.training_warning(instance_type)
    except gpu_hosts.HostError as exc:
        raise UserError(str(exc)) from exc


def make_estimator(ctx: Context, limits: TrainingLimits, hyperparameters: dict, *, session=None,
                   image: str | None = None, role: str | None = None,
                   checkpoints: str | None = None, output_path: str | None = None,
                   spot: bool | None = None):
    """The generic SDK Estimator of a training job: our image, the metric definitions of
    train/metrics.py, managed spot unless --no-spot (``spot`` overrides), and our own
    debugger report unless --debugger-service.

    Raises:
        UserError: --max-wait below --max-run with spot.
    """
    from sagemaker.estimator import Estimator

    spot = limits.spot if spot is None else spot
    types = _types(limits)  # checked by the verb (preferred_types); the first is the SDK's
    if limits.retries is not None and not 1 <= limits.retries <= 30:
        raise UserError(f"--retries {limits.retries}: SageMaker retries a job 1-30 times "
                        "(RetryStrategy.MaximumRetryAttempts)")
    if spot and (limits.max_wait or 0) < limits.max_run:
        raise UserError(f"--max-wait ({limits.max_wait}) must be at least --max-run "
                        f"({limits.max_run}) for spot training")
    kwargs = dict(
        image_uri=image or ctx.image(),
        role=role or ctx.role(),
        instance_count=int(ctx.get("instance_count")),
        instance_type=types[0] if types else ctx.get("instance_type"),
        volume_size=limits.volume_size,
        max_run=limits.max_run,
        hyperparameters=hyperparameters,
        metric_definitions=METRIC_DEFINITIONS,
        output_path=output_path or f"{ctx.s3_prefix()}/output",
        sagemaker_session=session or ctx.session,
        base_job_name="dog-breeds",
        environment={"PYTHONUNBUFFERED": "1"},
    )
    if spot:
        kwargs.update(use_spot_instances=True, max_wait=limits.max_wait)
    if checkpoints:
        kwargs["checkpoint_s3_uri"] = checkpoints
    if limits.retries is not None:
        kwargs["max_retry_attempts"] = limits.retries
    if limits.infra_check:
        kwargs["enable_infra_check"] = True
    if limits.debugger_service:
        kwargs.update(debugger_settings(ctx, limits.job_name or "train"))
    else:  # our container writes its own reports; the SDK would add a hook and profiler
        kwargs.update(disable_profiler=True, debugger_hook_config=False)
    return Estimator(**kwargs)


def _types(limits: TrainingLimits) -> list[str]:
    return [t.strip() for t in (limits.instance_types or "").split(",") if t.strip()]


def preferred_types(limits: TrainingLimits, spot: bool, tuning: bool = False) -> list[str]:
    """--instance-types as a list in priority order ([] when not given), each checked as
    --instance-type is (training_instance_warning).

    Raises:
        UserError: a training job (not ``tuning``) with managed spot (AWS: InstancePreferences
            is mutually exclusive with EnableManagedSpotTraining), more than five types, one
            given twice, or one the image cannot run on.
    """
    types = _types(limits)
    if not types:
        return []
    if spot and not tuning:
        raise UserError("--instance-types: SageMaker takes instance preferences for on-demand "
                        "jobs only; add --no-spot")
    if len(types) > 5 or len(set(types)) != len(types):
        raise UserError(f"--instance-types {limits.instance_types}: up to 5 different types")
    for t in types:
        training_instance_warning(t)
    return types


def preferring(client, types: list[str], count: int):
    """A context manager: while inside, a training job ``client`` creates runs on the first of
    ``types`` with capacity (ResourceConfig.InstancePreferences, ``count`` instances each, in
    place of InstanceType and InstanceCount), and a tuning job's training jobs go through the
    types in order (HyperParameterTuningResourceConfig.InstanceConfigs with AllocationStrategy
    Prioritized); SageMaker API reference. Nothing changes when ``types`` is empty."""
    if not types:
        return contextlib.nullcontext()

    def prefer(params: dict) -> None:
        resources = params["ResourceConfig"]
        resources.pop("InstanceType", None)
        resources.pop("InstanceCount", None)
        resources["InstancePreferences"] = [{"InstanceType": t, "InstanceCount": count}
                                            for t in types]

    def prioritize(params: dict) -> None:
        definition = params["TrainingJobDefinition"]
        resources = definition.get("HyperParameterTuningResourceConfig") or definition.get(
            "ResourceConfig")
        if resources is not None:
            volume = resources.get("VolumeSizeInGB")
            definition.pop("ResourceConfig", None)
            definition["HyperParameterTuningResourceConfig"] = {
                "AllocationStrategy": "Prioritized",
                "InstanceConfigs": [{"InstanceType": t, "InstanceCount": count,
                                     **({"VolumeSizeInGB": volume} if volume else {})}
                                    for t in types]}

    stack = contextlib.ExitStack()
    stack.enter_context(adding(client, "CreateTrainingJob", prefer))
    stack.enter_context(adding(client, "CreateHyperParameterTuningJob", prioritize))
    return stack


def best_hyperparameters(sm, tuning_job: str) -> tuple[str, dict[str, str]]:
    """The best training job of ``tuning_job`` and its hyperparameters, without the keys the
    platform adds (the job ignores them too: train/hyperparameters.py, IGNORED_PREFIXES).

    Raises:
        UserError: the tuning job has no best training job yet.
    """
    desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    best = desc.get("BestTrainingJob")
    if not best:
        raise UserError(f"tuning job {tuning_job} has no best training job yet "
                        f"({desc['HyperParameterTuningJobStatus']}); python deploy.py tune --attach "
                        f"{tuning_job} prints its jobs so far; run this again once one has "
                        "completed")
    job = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    hps = {k: v.strip('"') for k, v in job["HyperParameters"].items()
           if not k.startswith(IGNORED_PREFIXES)}
    return best["TrainingJobName"], hps
