"""The command line's options as typed values, made once per run from argparse's ``Namespace``
(``from_args``) and handed to deployment's library modules, which never see the command line:
a rule about an option is checked in one place, and a library function can be called from a
test or another program without faking a command line.

A verb that does not define an option gets the field's default (``None``: not given), so one
class serves every verb that shares the options (deploy, update, rollback, transform, compile).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from deployment.errors import UserError
from deployment.guardrails import StrategyOptions


def _given(cls, args, **renamed):
    """``cls`` from ``args``: each field from the attribute of its name (or ``renamed[field]``),
    its default where the verb has no such option."""
    values = {}
    for f in fields(cls):
        attribute = renamed.get(f.name, f.name)
        if hasattr(args, attribute):
            values[f.name] = getattr(args, attribute)
    return cls(**values)


@dataclass(frozen=True)
class ServingOptions:
    """The serving options a model's environment carries (serve/config.py reads them):
    ``workers`` (processes), ``max_batch_size`` (images), ``max_batch_delay_ms`` (ms), and
    ``env``, any other serving variable as (name, value) pairs (--env NAME=VALUE)."""

    workers: int | None = None
    max_batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    env: tuple[tuple[str, str], ...] = ()  # --env NAME=VALUE, in order

    @classmethod
    def from_args(cls, args) -> "ServingOptions":
        """Raises: UserError: an --env that is not NAME=VALUE."""
        pairs = []
        for item in getattr(args, "env", None) or ():
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise UserError(f"--env {item}: NAME=VALUE, such as SERVE_COMPILE=off")
            pairs.append((name.strip(), value))
        return cls(getattr(args, "workers", None), getattr(args, "max_batch_size", None),
                   getattr(args, "max_batch_delay_ms", None), tuple(pairs))

    def variables(self) -> dict[str, tuple[str, int | None]]:
        """Environment variable -> (the option's flag, its value or None)."""
        return {"SAGEMAKER_MODEL_SERVER_WORKERS": ("--workers", self.workers),
                "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": ("--max-batch-size",
                                                          self.max_batch_size),
                "SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS": ("--max-batch-delay-ms",
                                                              self.max_batch_delay_ms)}


@dataclass(frozen=True)
class ArtifactOptions:
    """Which model.tar.gz: ``model_data`` (an S3 URI) or the ``training_job`` that wrote it."""

    model_data: str | None = None
    training_job: str | None = None

    @classmethod
    def from_args(cls, args) -> "ArtifactOptions":
        return _given(cls, args)


@dataclass(frozen=True)
class AsyncOptions:
    """An asynchronous endpoint's options (``enabled``: --async): the invocation timeout (s),
    the answers' and failures' S3 prefixes, the SNS topics' ARNs, and the invocations an
    instance takes at once."""

    enabled: bool = False
    output_path: str | None = None
    failure_path: str | None = None
    sns_success: str | None = None
    sns_error: str | None = None
    max_concurrent_invocations: int | None = None
    invocation_timeout: int | None = None

    @classmethod
    def from_args(cls, args) -> "AsyncOptions":
        return _given(cls, args, enabled="asynchronous")

    def given(self) -> list[str]:
        """The asynchronous-only options given, by field name."""
        return [f.name for f in fields(self) if f.name != "enabled"
                and getattr(self, f.name) is not None]


@dataclass(frozen=True)
class VariantOptions:
    """The shape options of an endpoint's production variant: ``instance_type``,
    ``instance_count``, ``serverless`` with ``memory_mb`` and ``max_concurrency``, the start-up
    health check's ``startup_timeout`` (s), the ``inference_ami_version``, and the data
    ``capture`` percentage, the ``instance_types`` of its pools (--instance-types, in priority
    order) with their ``provision_timeout`` (s), and the endpoint's metrics: their
    ``metrics_frequency`` (s) and ``no_detailed_observability``. None: not given (an update
    keeps the endpoint's)."""

    instance_type: str | None = None
    instance_count: int | None = None
    serverless: bool = False
    memory_mb: int | None = None
    max_concurrency: int | None = None
    startup_timeout: int | None = None
    inference_ami_version: str | None = None
    capture: int | None = None
    instance_types: str | None = None
    provision_timeout: int | None = None
    metrics_frequency: int | None = None
    no_detailed_observability: bool = False

    @classmethod
    def from_args(cls, args) -> "VariantOptions":
        return _given(cls, args, instance_type="endpoint_instance_type")


@dataclass(frozen=True)
class RollbackOptions:
    """What a deployment rolls back on: the ``alarms`` named (--alarm) beside the endpoint's
    own, or nothing (``no_rollback``)."""

    alarms: tuple[str, ...] = ()
    no_rollback: bool = False

    @classmethod
    def from_args(cls, args) -> "RollbackOptions":
        return cls(tuple(getattr(args, "alarm", None) or ()),
                   bool(getattr(args, "no_rollback", False)))


@dataclass(frozen=True)
class TrainingLimits:
    """A training job's limits: ``max_run`` and ``max_wait`` (s), ``volume_size`` (GB),
    managed ``spot`` capacity, the ``job_name`` asked for, ``debugger_service`` (SageMaker's
    Debugger rules instead of the container's own report), the ``instance_types`` preferred
    (--instance-types, in priority order), the ``retries`` on internal errors and the
    ``infra_check`` before the start."""

    max_run: int
    volume_size: int
    max_wait: int | None = None
    spot: bool = False
    job_name: str | None = None
    debugger_service: bool = False
    instance_types: str | None = None
    retries: int | None = None
    infra_check: bool = False

    @classmethod
    def from_args(cls, args) -> "TrainingLimits":
        return _given(cls, args)


@dataclass(frozen=True)
class UpdateOptions:
    """``update`` (and ``deploy --update``): the deployment ``strategy``, what it ``rollback``s
    on, the ``variant``'s shape, the ``artifact``, the ``serving`` options, whether ``--async``
    was asked (refused: an update keeps the endpoint's kind), and whether to ``wait``."""

    strategy: StrategyOptions
    rollback: RollbackOptions
    variant: VariantOptions
    artifact: ArtifactOptions
    serving: ServingOptions
    asynchronous: bool = False
    wait: bool = True

    @classmethod
    def from_args(cls, args) -> "UpdateOptions":
        return cls(StrategyOptions.from_args(args), RollbackOptions.from_args(args),
                   VariantOptions.from_args(args), ArtifactOptions.from_args(args),
                   ServingOptions.from_args(args), bool(getattr(args, "asynchronous", False)),
                   bool(getattr(args, "wait", True)))
