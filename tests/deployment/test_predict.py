"""deploy.py predict: photos through the SDK Predictor to a real serve process."""

from __future__ import annotations

import io
import json
import urllib.request

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from deployment import sessions as deploy_sessions
from tests.conftest import DOG_PHOTOS
from tests.deployment.conftest import REGION, run


class _Raw(io.BytesIO):
    """What botocore reads a response from: read()/close() for streaming bodies, stream()."""

    def stream(self, **_):
        yield self.getvalue()


@pytest.mark.model
def test_predict_goes_through_sdk_predictor_to_real_serve(server, capsys, monkeypatch):
    session = boto3.Session(region_name=REGION)
    sent = []

    def to_serve(request, **_):
        if not request.url.endswith("/invocations"):
            return None
        headers = {k: v.decode() if isinstance(v, bytes) else v
                   for k, v in request.headers.items()
                   if k in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")}
        sent.append(headers)
        req = urllib.request.Request(server.url + "/invocations", data=request.body,
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return AWSResponse(request.url, r.status, dict(r.headers), _Raw(r.read()))

    session.events.register("before-send.sagemaker-runtime.InvokeEndpoint", to_serve)
    monkeypatch.setattr(deploy_sessions, "make_boto_session", lambda region: session)
    photos = [str(p) for p in DOG_PHOTOS[:2]]
    code, out, err = run(capsys, "predict", "--endpoint", "dogs-ep", "-k", "2", *photos)
    assert code == 0, err
    assert sent and sent[0]["Content-Type"] == "image/jpeg"
    assert sent[0]["X-Amzn-SageMaker-Custom-Attributes"] == "k=2"
    classes = json.loads(_manifest_of(server).read_text())["classes"]
    for photo in photos:
        direct = urllib.request.Request(server.url + "/invocations",
                                        data=open(photo, "rb").read(),
                                        headers={"Content-Type": "image/jpeg"}, method="POST")
        with urllib.request.urlopen(direct, timeout=60) as r:
            top = json.loads(r.read())["predictions"][0]["top_k"][0]["label"]
        row = next(line for line in out.splitlines() if line.startswith(photo.split("/")[-1]))
        assert top in row, (top, row)
    rows = out.splitlines()[2:]  # header and rule first
    assert len(rows) == 2 * len(photos)
    assert all(any(label in row for label in classes) for row in rows), out


def _manifest_of(server):
    """The manifest.json of the model the running serve process loaded (its SM_MODEL_DIR)."""
    from pathlib import Path

    import psutil

    env = psutil.Process(server.proc.pid).environ()
    return Path(env["SM_MODEL_DIR"]) / "manifest.json"
