"""The boto3 session every AWS call of deploy.py goes through (the SageMaker session, local
mode's too), made in one place so that the tests can record every request on it."""

from __future__ import annotations


def make_boto_session(region: str | None):
    """The boto3 session every AWS call goes through (tests register botocore handlers on it)."""
    import boto3

    return boto3.Session(region_name=region)
