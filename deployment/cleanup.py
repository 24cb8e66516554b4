"""What deploy.py leaves behind besides an endpoint's versions, for ``delete --all``: the S3
objects under the project's prefix (by kind: data, output, checkpoints, capture, ...), the ECR
repository, the CloudWatch log groups and streams of the endpoint and of the project's jobs, and
the local state file. Listed first, deleted in a safe order, each missing piece skipped, so a
second run finds nothing and deletes nothing.

Kept on purpose: the S3 bucket (the SageMaker SDK's default bucket holds other projects' files),
the execution role and anything outside the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deployment import storage
from deployment.errors import is_not_found

# SageMaker's log groups (developer guide, "Log Amazon SageMaker AI events by using Amazon
# CloudWatch"): one per endpoint, and one per job type shared by every job of the account.
ENDPOINT_LOG_GROUP = "/aws/sagemaker/Endpoints/{endpoint}"
JOB_LOG_GROUPS = ("/aws/sagemaker/TrainingJobs", "/aws/sagemaker/TransformJobs")
# The names deploy.py gives its jobs (train, compile, local, transform: dog-breeds-...; tune's
# training jobs: dogs-tune-...): only their streams are deleted from the shared groups.
JOB_NAME_PREFIXES = ("dog-breeds", "dogs-tune-")


@dataclass
class Leftovers:
    """What ``find`` found: S3 keys -> bytes, the ECR repository's name, images and bytes (None
    when there is none), the log groups to delete, the streams to delete from the shared job
    groups, and the state file (None when absent)."""

    bucket: str
    key_prefix: str
    objects: dict[str, int] = field(default_factory=dict)
    repository: tuple[str, int, int] | None = None
    log_groups: list[str] = field(default_factory=list)
    log_streams: dict[str, list[str]] = field(default_factory=dict)
    state_file: Path | None = None

    def empty(self) -> bool:
        """Nothing left to delete."""
        return not (self.objects or self.repository or self.log_groups
                    or any(self.log_streams.values()) or self.state_file)

    def lines(self) -> list[str]:
        """The listing a user confirms: one line per kind of thing, with counts and sizes."""
        out = []
        kinds: dict[str, list[int]] = {}
        for key, size in self.objects.items():
            kind = key[len(self.key_prefix):].split("/", 1)[0] or "(top level)"
            kinds.setdefault(kind, []).append(size)
        for kind, sizes in sorted(kinds.items()):
            out.append(f"S3 s3://{self.bucket}/{self.key_prefix}{kind}/: {len(sizes):,} "
                       f"objects, {_size(sum(sizes))}")
        if self.repository:
            name, images, size = self.repository
            out.append(f"ECR repository {name}: {images} images, {_size(size)}")
        out += [f"CloudWatch log group {g}" for g in self.log_groups]
        out += [f"CloudWatch log group {g}: {len(s)} streams of deploy.py's jobs"
                for g, s in self.log_streams.items() if s]
        if self.state_file:
            out.append(f"local state {self.state_file}")
        return out


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def find(boto, bucket: str, prefix: str, repository: str, endpoint: str,
         state_file: Path) -> Leftovers:
    """Everything deploy.py made under ``s3://bucket/prefix/``, in ECR's ``repository``, in
    the logs of ``endpoint`` and of deploy.py's jobs, and the local ``state_file``; reads only.
    """
    from botocore.exceptions import ClientError

    key_prefix = prefix.strip("/") + "/"
    found = Leftovers(bucket, key_prefix)
    s3 = boto.client("s3")
    try:
        found.objects = {k: o["Size"] for k, o in storage.objects(s3, bucket, key_prefix).items()}
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchBucket":
            raise
    ecr = boto.client("ecr")
    try:
        ecr.describe_repositories(repositoryNames=[repository])
        images = [d for page in ecr.get_paginator("describe_images").paginate(
            repositoryName=repository) for d in page["imageDetails"]]
        found.repository = (repository, len(images),
                            sum(d.get("imageSizeInBytes", 0) for d in images))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "RepositoryNotFoundException":
            raise
    logs = boto.client("logs")
    group = ENDPOINT_LOG_GROUP.format(endpoint=endpoint)
    if any(g["logGroupName"] == group for g in logs.describe_log_groups(
            logGroupNamePrefix=group)["logGroups"]):
        found.log_groups.append(group)
    for group in JOB_LOG_GROUPS:
        found.log_streams[group] = _job_streams(logs, group)
    found.state_file = state_file if state_file.exists() else None
    return found


def _job_streams(logs, group: str) -> list[str]:
    """The streams of deploy.py's jobs in the shared log ``group`` (none when it is missing)."""
    from botocore.exceptions import ClientError

    streams = []
    for prefix in JOB_NAME_PREFIXES:
        try:
            for page in logs.get_paginator("describe_log_streams").paginate(
                    logGroupName=group, logStreamNamePrefix=prefix):
                streams += [s["logStreamName"] for s in page["logStreams"]]
        except ClientError as exc:
            if not is_not_found(exc):
                raise
    return streams


def delete(boto, found: Leftovers) -> list[str]:
    """Delete what ``find`` found, in this order: the S3 objects, the logs, the ECR repository
    (its images included), the state file; returns one line per step. A piece already gone is
    skipped.

    Raises:
        deployment.errors.UserError: S3 refused to delete some objects.
    """
    from botocore.exceptions import ClientError

    out = []
    if found.objects:
        storage.delete_keys(boto.client("s3"), found.bucket, sorted(found.objects))
        out.append(f"deleted {len(found.objects):,} objects under "
                   f"s3://{found.bucket}/{found.key_prefix}")
    logs = boto.client("logs")
    for group in found.log_groups:
        try:
            logs.delete_log_group(logGroupName=group)
            out.append(f"deleted log group {group}")
        except ClientError as exc:
            if not is_not_found(exc):
                raise
    for group, streams in found.log_streams.items():
        for stream in streams:
            try:
                logs.delete_log_stream(logGroupName=group, logStreamName=stream)
            except ClientError as exc:
                if not is_not_found(exc):
                    raise
        if streams:
            out.append(f"deleted {len(streams)} log streams from {group}")
    if found.repository:
        try:
            boto.client("ecr").delete_repository(repositoryName=found.repository[0], force=True)
            out.append(f"deleted ECR repository {found.repository[0]}")
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "RepositoryNotFoundException":
                raise
    if found.state_file:
        found.state_file.unlink(missing_ok=True)
        out.append(f"deleted {found.state_file}")
    return out
