"""An endpoint's versions: the models and endpoint configs deploy.py made for it, found by their
tags, and the pointer from each config to the one it replaced.

Every model and endpoint config deploy.py creates carries ``TAG_ENDPOINT`` = the endpoint's name;
a config made by ``update`` or ``rollback`` also carries ``TAG_PREVIOUS`` = the config the
endpoint ran before it (``rollback``'s target: a rollback deploys a clone of it). ``update``
keeps ``KEEP`` versions, the one serving and the one before it, and removes the older tagged
ones (``prune``); ``delete`` removes them all. Nothing untagged is listed or removed, so
resources someone else named alike stay.
"""

from __future__ import annotations

from deployment.errors import is_not_found

TAG_ENDPOINT = "sagemaker-dog-breeds:endpoint"
TAG_PREVIOUS = "sagemaker-dog-breeds:previous-config"
KEEP = 2  # the version serving and the one before it (deploy.py rollback's target)
STEM = 63 - 24  # names are at most 63 characters: the endpoint's name cut to this, "-", a time


def new_name(endpoint: str) -> str:
    """A new version's name (its model's and config's): ``ENDPOINT-YYYY-MM-DD-HH-MM-SS-mmm``,
    the endpoint's name cut to ``STEM`` characters."""
    from sagemaker.utils import name_from_base

    return name_from_base(endpoint[:STEM])


def tags(endpoint: str, previous: str | None = None) -> list[dict[str, str]]:
    """The tags of a model or endpoint config of ``endpoint`` (``previous``: the config this one
    replaces)."""
    out = [{"Key": TAG_ENDPOINT, "Value": endpoint}]
    if previous:
        out.append({"Key": TAG_PREVIOUS, "Value": previous})
    return out


def tag_values(sm, arn: str) -> dict[str, str]:
    """A resource's tags as a dict."""
    values, token = {}, None
    while True:
        page = sm.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
        values.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        token = page.get("NextToken")
        if not token:
            return values


def _listed(sm, kind: str, endpoint: str) -> list[tuple[str, str, object]]:
    """(name, ARN, CreationTime) of the models or endpoint configs whose names contain
    ``endpoint``'s (as ``new_name`` cuts it)."""
    call, key, name, arn = {
        "model": (sm.list_models, "Models", "ModelName", "ModelArn"),
        "endpoint config": (sm.list_endpoint_configs, "EndpointConfigs", "EndpointConfigName",
                            "EndpointConfigArn")}[kind]
    out, token = [], None
    while True:
        page = call(NameContains=endpoint[:STEM], MaxResults=100,
                    **({"NextToken": token} if token else {}))
        out += [(item[name], item[arn], item["CreationTime"]) for item in page[key]]
        token = page.get("NextToken")
        if not token:
            return out


def tagged(sm, kind: str, endpoint: str) -> list[str]:
    """The names of the models or endpoint configs (``kind``) tagged as ``endpoint``'s."""
    return list(_tagged(sm, kind, endpoint))


def _tagged(sm, kind: str, endpoint: str) -> dict[str, object]:
    """name -> CreationTime of the models or endpoint configs tagged as ``endpoint``'s."""
    return {name: created for name, arn, created in _listed(sm, kind, endpoint)
            if tag_values(sm, arn).get(TAG_ENDPOINT) == endpoint}


def previous_config(sm, config: str) -> str | None:
    """The config ``config`` replaced (its TAG_PREVIOUS), or None when it records none."""
    arn = sm.describe_endpoint_config(EndpointConfigName=config)["EndpointConfigArn"]
    return tag_values(sm, arn).get(TAG_PREVIOUS)


def models_of(sm, config: str) -> list[str]:
    """The models an endpoint config's variants run ([] when the config is gone)."""
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_endpoint_config(EndpointConfigName=config)
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        return []
    return [v["ModelName"] for v in desc["ProductionVariants"]
            + desc.get("ShadowProductionVariants", [])]


def remove(sm, configs: list[str], models: list[str]) -> list[str]:
    """Delete these endpoint configs, then these models; one line each ("already gone" when
    missing). Returns the lines."""
    from botocore.exceptions import ClientError

    lines = []
    steps = [("endpoint config", c, lambda c=c: sm.delete_endpoint_config(EndpointConfigName=c))
             for c in configs]
    steps += [("model", m, lambda m=m: sm.delete_model(ModelName=m)) for m in models]
    for what, name, call in steps:
        try:
            call()
            lines.append(f"deleted {what} {name}")
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            lines.append(f"{what} {name}: already gone")
    return lines


def in_use(sm, endpoint: str) -> set[str]:
    """The endpoint configs ``endpoint`` runs or is deploying now: DescribeEndpoint's
    EndpointConfigName and its PendingDeploymentSummary's (empty when the endpoint is gone).
    SageMaker's API reference (UpdateEndpoint) says not to delete a config in use: it cannot be
    told from the tags alone, so whoever deletes asks right before."""
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        if not is_not_found(exc):
            raise
        return set()
    pending = (desc.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    return {c for c in (desc.get("EndpointConfigName"), pending) if c}


def prune(sm, endpoint: str, keep: list[str], replaced: str, own: tuple[str, ...] = ()
          ) -> list[str]:
    """Remove ``endpoint``'s old versions: its tagged configs made before ``replaced`` (the
    config this run's update or rollback replaced) other than ``keep``, this run's ``own``
    configs (a version rolled back), and the tagged models made before ``replaced`` or by
    ``own`` that no remaining config runs. A config the endpoint runs or deploys now (asked
    right before deleting, ``in_use``) and its model are never removed, and nothing made after
    ``replaced`` by another run is either: a second update started meanwhile keeps its version.
    Returns the lines."""
    configs = _tagged(sm, "endpoint config", endpoint)
    if replaced not in configs:
        return [f"kept every version of {endpoint}: {replaced} is gone, so which are older "
                "cannot be told"]
    cutoff = configs[replaced]
    models = _tagged(sm, "model", endpoint)
    live = in_use(sm, endpoint)
    protected = set(keep) | live
    doomed = [c for c, created in configs.items()
              if c not in protected and (created < cutoff or c in own)]
    runs = {m for c in set(configs) - set(doomed) | live for m in models_of(sm, c)}
    own_models = {m for c in own for m in models_of(sm, c)}
    return remove(sm, doomed, [m for m, created in models.items() if m not in runs
                               and (created < cutoff or m in own_models)])
