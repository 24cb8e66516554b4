"""The IAM actions deploy.py's AWS calls need: the caller's least-privilege policy lives in
docs/iam/caller-policy.json (docs/iam.md says how to use it), and ``action`` names the IAM
action of a botocore operation, for that policy's test and for the AccessDenied line.

Most actions are the service's IAM prefix and the operation's name; the exceptions are in
``ACTIONS`` (AWS's Service Authorization Reference: S3's object listing and reads, the runtime's
invocations under ``sagemaker:``, and STS's GetCallerIdentity, which needs no permission).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

CALLER_POLICY = Path(__file__).resolve().parents[1] / "docs" / "iam" / "caller-policy.json"
PREFIXES = {"application-auto-scaling": "application-autoscaling",
            "sagemaker-runtime": "sagemaker", "cloudwatch-logs": "logs"}
ACTIONS = {("s3", "ListObjectsV2"): "s3:ListBucket", ("s3", "ListObjects"): "s3:ListBucket",
           ("s3", "HeadObject"): "s3:GetObject", ("s3", "DeleteObjects"): "s3:DeleteObject",
           ("s3", "HeadBucket"): "s3:ListBucket",
           ("s3", "CreateMultipartUpload"): "s3:PutObject", ("s3", "UploadPart"): "s3:PutObject",
           ("s3", "CompleteMultipartUpload"): "s3:PutObject",
           ("sts", "GetCallerIdentity"): None}


def action(service: str, operation: str) -> str | None:
    """The IAM action botocore's ``operation`` of ``service`` (its client name) needs, or None
    when it needs none."""
    if (service, operation) in ACTIONS:
        return ACTIONS[service, operation]
    return f"{PREFIXES.get(service, service)}:{operation}"


def allowed_actions(policy: dict) -> list[str]:
    """The Allow statements' actions of a policy document (patterns such as ``s3:Get*``)."""
    out = []
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow":
            actions = statement["Action"]
            out += [actions] if isinstance(actions, str) else actions
    return out


def missing(calls, policy_path: Path = CALLER_POLICY) -> list[str]:
    """The IAM actions that ``calls`` ((service, operation) pairs) need and the policy at
    ``policy_path`` does not allow, sorted."""
    patterns = [p.lower() for p in allowed_actions(json.loads(policy_path.read_text()))]
    needed = {action(service, operation) for service, operation in calls} - {None}
    return sorted(a for a in needed
                  if not any(fnmatch.fnmatchcase(a.lower(), p) for p in patterns))
