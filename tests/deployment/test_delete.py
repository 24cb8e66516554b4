"""deploy.py delete --all: everything deploy.py made for a prefix and an endpoint, listed, asked
for, deleted in order, and nothing outside it; a second run finds nothing."""

from __future__ import annotations

import io
import json

import boto3
import pytest

from deployment import settings as deploy_settings
from tests.deployment.conftest import BUCKET, REGION, REPO, run

OURS = ["dog-breeds/data/train/001.Affenpinscher/a.jpg", "dog-breeds/data/valid/x.jpg",
        "dog-breeds/output/dog-breeds-1/output/model.tar.gz",
        "dog-breeds/capture/dogs-ep/AllTraffic/2026/12/07/a.jsonl"]
NOT_OURS = ["other-project/model.tar.gz", "dog-breeds-old/x"]


def _made(aws, capsys) -> None:
    """An endpoint, objects under the prefix and beside it, logs of ours and of another job."""
    code, _, err = run(capsys, "deploy", "--no-wait", "--model-data",
                       f"s3://{BUCKET}/{OURS[2]}", "--endpoint", "dogs-ep",
                       "--instance-type", "ml.m5.xlarge")
    assert code == 0, err
    s3 = boto3.client("s3", region_name=REGION)
    for key in OURS + NOT_OURS:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 1000)
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName="/aws/sagemaker/Endpoints/dogs-ep")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    for stream in ("dog-breeds-2026-12-07-10-00-00-000/algo-1-1765100000",
                   "dogs-tune-1-001-abc/algo-1-1765100000", "someone-else/algo-1-1765100000"):
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
    deploy_settings.save_state(endpoint="dogs-ep")


def test_delete_all_lists_asks_deletes_in_order_and_keeps_what_is_not_ours(aws, capsys,
                                                                         monkeypatch):
    _made(aws, capsys)
    s3 = boto3.client("s3", region_name=REGION)
    logs = boto3.client("logs", region_name=REGION)

    # Not a terminal and no --yes: the listing, a refusal, and nothing deleted.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = run(capsys, "delete", "--all", "--endpoint", "dogs-ep")
    assert code == 1 and "add --yes" in err, (out, err)
    assert "  endpoint dogs-ep" in out
    assert f"  S3 s3://{BUCKET}/dog-breeds/data/: 2 objects, 0.0 MB" in out
    assert f"  S3 s3://{BUCKET}/dog-breeds/capture/: 1 objects" in out
    assert f"  ECR repository {REPO}: 1 images" in out
    assert "  CloudWatch log group /aws/sagemaker/Endpoints/dogs-ep" in out
    assert "/aws/sagemaker/TrainingJobs: 2 streams of deploy.py's jobs" in out
    assert "local state" in out
    assert not aws.calls[("sagemaker", "DeleteEndpoint")]
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == len(OURS + NOT_OURS)

    # A terminal that answers no: nothing deleted either.
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = run(capsys, "delete", "--all", "--endpoint", "dogs-ep")
    assert code == 1 and "nothing deleted" in out
    assert not aws.calls[("sagemaker", "DeleteEndpoint")]

    code, out, err = run(capsys, "delete", "--all", "--yes", "--endpoint", "dogs-ep")
    assert code == 0, err
    done = out.splitlines()
    order = [next(i for i, line in enumerate(done) if line.startswith(start)) for start in (
        "deleted endpoint dogs-ep", "deleted model", f"deleted {len(OURS)} objects",
        "deleted log group", "deleted 2 log streams", f"deleted ECR repository {REPO}",
        "deleted ")]
    assert order[:6] == sorted(order[:6]), out  # the endpoint first: it is what costs
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(keys) == sorted(NOT_OURS)  # beside the prefix, even dog-breeds-old/
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")["logStreams"]
    assert [s["logStreamName"] for s in streams] == ["someone-else/algo-1-1765100000"]
    assert not logs.describe_log_groups(
        logGroupNamePrefix="/aws/sagemaker/Endpoints")["logGroups"]
    with pytest.raises(Exception, match="RepositoryNotFound"):
        boto3.client("ecr", region_name=REGION).describe_repositories(repositoryNames=[REPO])
    assert not deploy_settings.STATE_FILE.exists()
    assert boto3.client("s3", region_name=REGION).head_bucket(Bucket=BUCKET)  # kept

    # Idempotent: nothing left, nothing asked.
    code, out, err = run(capsys, "delete", "--all", "--endpoint", "dogs-ep")
    assert code == 0 and "nothing of deploy.py's is left" in out, (out, err)


def test_delete_all_on_an_empty_account_finds_nothing(aws, capsys):
    boto3.client("ecr", region_name=REGION).delete_repository(repositoryName=REPO, force=True)
    code, out, err = run(capsys, "delete", "--all", "--endpoint", "dogs-none")
    assert code == 0 and "nothing of deploy.py's is left for endpoint dogs-none" in out, err
    assert json.dumps(out)  # printed, nothing raised
