"""Amazon ECR: whether the image a job or an endpoint names is there, before anything starts."""

from __future__ import annotations

from deployment.errors import UserError


def check_ecr_image(boto, image: str) -> str | None:
    """Fail early, with the fix, when an ECR image URI names a missing repository or tag;
    returns the image's digest (``sha256:...``; None for an image outside ECR).

    Raises:
        UserError: the repository or the tag is not in ECR.
    """
    host, _, rest = image.partition("/")
    if ".dkr.ecr." not in host or not rest:
        return None  # not ECR: nothing to check
    account = host.split(".")[0]
    region = host.split(".dkr.ecr.")[1].split(".")[0]
    repo, _, tag = rest.partition(":")
    if "@" in repo:
        repo, _, digest = repo.partition("@")
        ids = [{"imageDigest": digest}]
    else:
        ids = [{"imageTag": tag or "latest"}]
    from botocore.exceptions import ClientError

    ecr = boto.client("ecr", region_name=region)
    try:
        found = ecr.describe_images(registryId=account, repositoryName=repo, imageIds=ids)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("RepositoryNotFoundException", "ImageNotFoundException"):
            raise UserError(f"image {image} is not in ECR ({code}); build and push it with "
                            f"container/build_and_push.sh {repo} {tag or 'latest'}, or pass "
                            "--image") from exc
        raise
    details = found.get("imageDetails") or [{}]
    return details[0].get("imageDigest")
