"""Amazon ECR: whether the image a job or an endpoint names is there, before anything starts."""

from __future__ import annotations

from deployment.errors import UserError


# SageMaker Serverless Inference refuses larger images ("Image size 13494688833 is greater than
# supported size 10737418240", its answer for AWS's own PyTorch GPU image).
SERVERLESS_IMAGE_LIMIT_BYTES = 10 * 1024**3


def _ecr_ids(image: str) -> tuple[str, str, str, list[dict], str] | None:
    """(registry account, region, repository, imageIds, tag) of an ECR image URI, or None for
    another registry."""
    host, _, rest = image.partition("/")
    if ".dkr.ecr." not in host or not rest:
        return None
    account = host.split(".")[0]
    region = host.split(".dkr.ecr.")[1].split(".")[0]
    repo, _, tag = rest.partition(":")
    if "@" in repo:
        repo, _, digest = repo.partition("@")
        return account, region, repo, [{"imageDigest": digest}], tag
    return account, region, repo, [{"imageTag": tag or "latest"}], tag


def _describe(boto, image: str) -> dict | None:
    """ECR's imageDetails entry of ``image``, or None when it is not an ECR image."""
    ids = _ecr_ids(image)
    if ids is None:
        return None
    account, region, repo, image_ids, _ = ids
    ecr = boto.client("ecr", region_name=region)
    found = ecr.describe_images(registryId=account, repositoryName=repo, imageIds=image_ids)
    return (found.get("imageDetails") or [{}])[0]


def check_ecr_image(boto, image: str) -> str | None:
    """Fail early, with the fix, when an ECR image URI names a missing repository or tag;
    returns the image's digest (``sha256:...``; None for an image outside ECR).

    Raises:
        UserError: the repository or the tag is not in ECR.
    """
    from botocore.exceptions import ClientError

    try:
        details = _describe(boto, image)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("RepositoryNotFoundException", "ImageNotFoundException"):
            account, region, repo, _, tag = _ecr_ids(image)
            elsewhere = _other_region(boto, image)
            if elsewhere:
                raise UserError(
                    f"image {image} is not in ECR in {region} ({code}), but "
                    f"{repo}:{tag or 'latest'} is in {elsewhere}: deploy there (region = "
                    f'"{elsewhere}" in deploy.toml, or --region {elsewhere}), or push to '
                    f"{region} with DEPLOY_REGION={region} container/build_and_push.sh") from exc
            raise UserError(f"image {image} is not in ECR ({code}); build and push it with "
                            f"container/build_and_push.sh {repo} {tag or 'latest'}, or pass "
                            "--image") from exc
        raise
    return (details or {}).get("imageDigest")


def _other_region(boto, image: str) -> str | None:
    """Another region of the account whose ECR holds ``image``'s repository and tag (the usual
    cause: build_and_push.sh pushed to the AWS CLI's region, deploy.py reads deploy.toml's), or
    None. Only asked once the image is missing; a region that refuses is skipped."""
    from botocore.exceptions import BotoCoreError, ClientError

    account, region, repo, image_ids, _ = _ecr_ids(image)
    for other in boto.get_available_regions("ecr"):
        if other == region:
            continue
        try:
            boto.client("ecr", region_name=other).describe_images(
                registryId=account, repositoryName=repo, imageIds=image_ids)
            return other
        except (BotoCoreError, ClientError):
            continue
    return None


def image_size_bytes(boto, image: str) -> int | None:
    """The size ECR reports for ``image`` (``imageSizeInBytes``: its layers as stored,
    compressed), or None when it cannot tell (another registry, no permission, no size)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        details = _describe(boto, image)
    except (BotoCoreError, ClientError):
        return None
    size = (details or {}).get("imageSizeInBytes")
    return size if isinstance(size, int) else None


def serverless_size_warning(boto, image: str) -> str | None:
    """A one-line warning when ECR says ``image`` is over Serverless Inference's 10 GiB limit
    (SERVERLESS_IMAGE_LIMIT_BYTES), else None (under it, or the size is unknown)."""
    size = image_size_bytes(boto, image)
    if size is None or size <= SERVERLESS_IMAGE_LIMIT_BYTES:
        return None
    return (f"warning: image {image} is {size / 1024**3:.1f} GiB in ECR, over SageMaker "
            f"Serverless Inference's 10 GiB image limit: the endpoint will not start; deploy "
            f"it to instances instead (drop --serverless)")
