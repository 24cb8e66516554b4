"""Amazon S3: the objects under a key prefix, and their deletion in S3's batches."""

from __future__ import annotations

from deployment.errors import UserError

# DeleteObjects takes at most 1,000 keys a request (Amazon S3 API Reference, DeleteObjects).
DELETE_BATCH = 1000


def objects(s3, bucket: str, key_prefix: str) -> dict[str, dict]:
    """Every object whose key starts with ``key_prefix``: its key -> ListObjectsV2's entry
    (``Size`` in bytes, ``ETag``, ``LastModified``)."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = obj
    return found


def delete_keys(s3, bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` of ``bucket``, ``DELETE_BATCH`` at a time; a missing key is no error.

    Raises:
        UserError: S3 refused some of them (the first one's key, code and message, and the fix).
    """
    for i in range(0, len(keys), DELETE_BATCH):
        batch = keys[i:i + DELETE_BATCH]
        answer = s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": key} for key in batch], "Quiet": True})
        if answer.get("Errors"):
            e = answer["Errors"][0]
            raise UserError(f"S3 did not delete {len(answer['Errors'])} objects, e.g. "
                            f"s3://{bucket}/{e['Key']}: {e.get('Code')} {e.get('Message')}. "
                            "Fix: grant s3:DeleteObject on the prefix, or use another --prefix")
