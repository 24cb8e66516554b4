"""AWS errors, and the user's, as one line with the fix: what every verb prints instead of a
traceback (deployment/cli.py). A bug keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes: printed as one line, exit 1."""


def is_not_found(exc) -> bool:
    """Whether a botocore ClientError says the named resource does not exist."""
    message = exc.response.get("Error", {}).get("Message", "")
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ResourceNotFound", "ResourceNotFoundException", "ValidationException") and (
        "not find" in message or "not exist" in message or "not found" in message.lower())


IAM_PAGE = "docs/iam.md"
HINTS = {
    "AccessDenied": f"your credentials lack permission for this call; {IAM_PAGE} gives the "
                    "policy",
    "AccessDeniedException": f"your credentials lack permission for this call; {IAM_PAGE} gives "
                             "the policy (and the role's trust of sagemaker.amazonaws.com)",
    "ResourceLimitExceeded": "an account quota is reached; ask for more in the Service Quotas "
                             "console, or pick another --instance-type",
    "ThrottlingException": "AWS throttled the request; wait a little and run it again",
    "ExpiredToken": "your session credentials expired; refresh them (aws sso login)",
    "ExpiredTokenException": "your session credentials expired; refresh them (aws sso login)",
    "InvalidClientTokenId": "the access key is not valid; check aws configure / AWS_PROFILE",
    "UnrecognizedClientException": "the access key is not valid; check aws configure",
    "NoSuchBucket": "the bucket does not exist; create it or pass another --bucket",
    "ResourceInUse": "the name is taken; pass another --job-name or delete the old resource",
}


def access_denied_hint(message: str, code: str) -> str:
    """The AccessDenied fix: the IAM action AWS's message names ("... is not authorized to
    perform: sagemaker:CreateModel ..."), to add to the caller's policy, else the generic hint."""
    import re

    found = re.search(r"perform: ([a-z0-9-]+:[A-Za-z0-9]+)", message)
    if not found:
        return HINTS[code]
    return (f"allow {found[1]} to your credentials (docs/iam/caller-policy.json has it "
            f"with the rest; {IAM_PAGE})")


def describe_error(exc: BaseException) -> str | None:
    """One line for a user error, or None for a bug (which then shows its traceback)."""
    from botocore.exceptions import (ClientError, NoCredentialsError, NoRegionError,
                                     ParamValidationError, PartialCredentialsError)

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials: run 'aws configure', set AWS_PROFILE, or export "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region, set region in deploy.toml, or set AWS_REGION"
    if isinstance(exc, ParamValidationError):
        return f"AWS rejected a parameter before sending it: {exc}; check the option values"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", str(exc))
        operation = getattr(exc, "operation_name", "?")
        if operation == "InvokeEndpoint" and code == "ValidationException" and "not found" in \
                message.lower():
            hint = "deploy it with python deploy.py deploy, or check --endpoint and --region"
        elif is_not_found(exc):
            hint = "check the name and --region"
        elif operation in ("PutObject", "UploadPart", "CreateMultipartUpload") and \
                code in ("AccessDenied", "403"):
            hint = "the bucket cannot be written; pass another --bucket or grant s3:PutObject"
        elif code in ("AccessDenied", "AccessDeniedException"):
            hint = access_denied_hint(message, code)
        else:
            hint = HINTS.get(code, "the AWS message says what to change")
        return f"{operation} failed ({code}): {message.rstrip('.')}. Fix: {hint}"
    try:
        from boto3.exceptions import S3UploadFailedError
        from sagemaker.exceptions import UnexpectedStatusException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, S3UploadFailedError):
        return f"upload failed: {exc}. Fix: pass a --bucket you can write to"
    if isinstance(exc, UnexpectedStatusException):
        return f"{exc}"
    from tools.folders import DatasetError

    if isinstance(exc, (DatasetError, OSError, ValueError)):
        return f"{exc}"
    return None
