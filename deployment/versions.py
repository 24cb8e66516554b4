"""An endpoint's versions: the models and endpoint configs deploy.py made for it, found by their
tags, and the pointer from each config to the one it replaced.

Every model and endpoint config deploy.py creates carries ``TAG_ENDPOINT`` = the endpoint's name;
a config made by ``update`` or ``rollback`` also carries ``TAG_PREVIOUS`` = the config the
endpoint ran before it (``rollback``'s target). ``update`` keeps ``KEEP`` versions, the one
serving and the one before it, and removes the other tagged ones; ``delete`` removes them all.
Nothing untagged is listed or removed, so resources someone else named alike stay.
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


def _listed(sm, kind: str, endpoint: str) -> list[tuple[str, str]]:
    """(name, ARN) of the models or endpoint configs whose names contain ``endpoint``'s (as
    ``new_name`` cuts it)."""
    call, key, name, arn = {
        "model": (sm.list_models, "Models", "ModelName", "ModelArn"),
        "endpoint config": (sm.list_endpoint_configs, "EndpointConfigs", "EndpointConfigName",
                            "EndpointConfigArn")}[kind]
    out, token = [], None
    while True:
        page = call(NameContains=endpoint[:STEM], MaxResults=100,
                    **({"NextToken": token} if token else {}))
        out += [(item[name], item[arn]) for item in page[key]]
        token = page.get("NextToken")
        if not token:
            return out


def tagged(sm, kind: str, endpoint: str) -> list[str]:
    """The names of the models or endpoint configs (``kind``) tagged as ``endpoint``'s."""
    return [name for name, arn in _listed(sm, kind, endpoint)
            if tag_values(sm, arn).get(TAG_ENDPOINT) == endpoint]


def previous_config(sm, config: str) -> str | None:
    """The config ``config`` replaced (its TAG_PREVIOUS), or None when it records none."""
    arn = sm.describe_endpoint_config(EndpointConfigName=config)["EndpointConfigArn"]
    return tag_values(sm, arn).get(TAG_PREVIOUS)


def set_previous(sm, config: str, previous: str) -> None:
    """Make ``previous`` the config ``config`` replaced (after a rollback, the one left)."""
    arn = sm.describe_endpoint_config(EndpointConfigName=config)["EndpointConfigArn"]
    sm.delete_tags(ResourceArn=arn, TagKeys=[TAG_PREVIOUS])
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_PREVIOUS, "Value": previous}])


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


def prune(sm, endpoint: str, keep: list[str]) -> list[str]:
    """Remove ``endpoint``'s tagged configs other than ``keep`` (the one serving and the one
    before it), and the tagged models none of the kept configs runs. Returns the lines."""
    kept_models = {m for config in keep for m in models_of(sm, config)}
    configs = [c for c in tagged(sm, "endpoint config", endpoint) if c not in keep]
    models = [m for m in tagged(sm, "model", endpoint) if m not in kept_models]
    return remove(sm, configs, models)
