"""What deploy.py puts into an endpoint config that the SageMaker Python SDK 2.x does not write:
the metrics SageMaker publishes (``MetricsConfig``: detailed observability scrapes the
container's ``GET /metrics``) and a variant's instance pools (``InstancePools``: up to five
instance types SageMaker falls back through when one has no capacity). The SDK's own
CreateEndpointConfig request gets them through deployment/requests.py, before botocore
validates the whole request.

Sources: the SageMaker API reference (CreateEndpointConfig's MetricsConfig, ProductionVariant's
InstancePools and VariantInstanceProvisionTimeoutInSeconds) and the developer guide, "Deploy to
multiple instance types with instance pools" (InstanceType is replaced by the list; priority 1
is tried first).
"""

from __future__ import annotations

from deployment.errors import UserError
from deployment.requests import adding
from deployment.models import inference_ami

# MetricsConfig.MetricPublishFrequencyInSeconds accepts these values only (API reference).
METRIC_FREQUENCIES_S = (10, 30, 60, 120, 180, 240, 300)
DEFAULT_METRIC_FREQUENCY_S = 60
MAX_POOLS = 5
PROVISION_TIMEOUT_RANGE_S = (300, 3600)


def metrics_config(frequency_s: int | None, detailed: bool = True) -> dict:
    """CreateEndpointConfig's ``MetricsConfig``: detailed observability on (SageMaker then
    scrapes ``GET /metrics`` on port 8080, serve's Prometheus text) or off, published every
    ``frequency_s`` seconds (default 60).

    Raises:
        UserError: a frequency SageMaker does not accept.
    """
    frequency_s = DEFAULT_METRIC_FREQUENCY_S if frequency_s is None else frequency_s
    if frequency_s not in METRIC_FREQUENCIES_S:
        raise UserError(f"--metrics-frequency {frequency_s}: SageMaker publishes metrics every "
                        f"{', '.join(map(str, METRIC_FREQUENCIES_S))} s; pick one")
    return {"EnableDetailedObservability": detailed,
            "MetricPublishFrequencyInSeconds": frequency_s}


def parse_types(text: str | None) -> list[str]:
    """``--instance-types a,b,c`` as a list in priority order ([] when not given).

    Raises:
        UserError: more than five types, or one given twice.
    """
    types = [t.strip() for t in (text or "").split(",") if t.strip()]
    if len(types) > MAX_POOLS:
        raise UserError(f"--instance-types: {len(types)} types; a variant takes at most "
                        f"{MAX_POOLS} instance pools")
    if len(set(types)) != len(types):
        raise UserError(f"--instance-types {text}: a type is given twice")
    return types


def pools_ami(types: list[str], requested: str = "auto") -> str | None:
    """The one InferenceAmiVersion the pooled ``types`` run (None for CPU types), each checked
    as a single type is (the image's architecture, its GPU kernels, the driver's AMI).

    Raises:
        UserError: a type the image cannot run on, or a mix that needs different AMIs (a
            variant has one): one line naming each type's.
    """
    amis = {t: inference_ami(t, requested) for t in types}
    if len(set(amis.values())) > 1:
        each = ", ".join(f"{t}: {a or 'none (CPU)'}" for t, a in amis.items())
        raise UserError(f"--instance-types: a variant runs one InferenceAmiVersion and these "
                        f"types need different ones ({each}); pool GPU types of one driver, or "
                        "CPU types only")
    return amis[types[0]]


def instance_pools(types: list[str]) -> list[dict]:
    """ProductionVariant.InstancePools: each type with its priority, 1 first."""
    return [{"InstanceType": t, "Priority": i} for i, t in enumerate(types, start=1)]


def pooled(variant: dict, types: list[str], provision_timeout_s: int | None) -> dict:
    """``variant`` with ``types`` as its instance pools in place of its InstanceType (and the
    provision timeout, s, when given).

    Raises:
        UserError: a provision timeout outside 300-3600 s.
    """
    out = {k: v for k, v in variant.items() if k != "InstanceType"}
    out["InstancePools"] = instance_pools(types)
    if provision_timeout_s is not None:
        low, high = PROVISION_TIMEOUT_RANGE_S
        if not low <= provision_timeout_s <= high:
            raise UserError(f"--provision-timeout {provision_timeout_s}: SageMaker takes "
                            f"{low}-{high} s")
        out["VariantInstanceProvisionTimeoutInSeconds"] = provision_timeout_s
    return out


def extended(sm_client, config_fields: dict, types: list[str],
             provision_timeout_s: int | None = None):
    """A context manager: while inside, every CreateEndpointConfig request ``sm_client`` sends
    gets ``config_fields`` (``MetricsConfig``) and, when ``types`` are given, its first
    production variant pooled over them (``pooled``)."""
    def extend(params):
        params.update(config_fields)
        if types:
            first, *rest = params["ProductionVariants"]
            params["ProductionVariants"] = [pooled(first, types, provision_timeout_s), *rest]

    return adding(sm_client, "CreateEndpointConfig", extend)
