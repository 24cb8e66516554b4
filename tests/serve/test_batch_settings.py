"""Batch transform and asynchronous settings, /execution-parameters' suggestion, and the JSON
Lines parser, without a model: what a transform job's environment makes of the server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from serve import batch_transform, config, jsonlines, settings_table
from serve.errors import ClientError
from tests.conftest import ROOT

MB = 1024 * 1024


def settings(env: dict, gpus: int = 0) -> config.Settings:
    return config.Settings.from_env(env, gpus=gpus)


def test_real_time_defaults_are_unchanged():
    s = settings({})
    assert (s.batch, s.timeout_s, s.max_payload_bytes, s.max_queue) == (False, 60, 6 * MB, 32)
    assert s.body_timeout_s == settings_table.DEFAULT_BODY_TIMEOUT_S
    assert s.body_memory_bytes == 1024 * MB and s.max_lines_per_request == 10_000


def test_a_transform_jobs_environment():
    """SAGEMAKER_BATCH=true: the job's timeout default (600 s) and payload; its concurrency or
    our suggestion, with a queue per worker that holds all of it."""
    s = settings({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"})
    assert s.batch and s.timeout_s == 600 and s.max_payload_bytes == 20 * MB
    assert s.max_concurrent_transforms == 100 // 20  # the product rule caps 2 x 1 x 8
    s = settings({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "64",
                  "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "SAGEMAKER_BATCH_STRATEGY":
                  "MULTI_RECORD", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600"})
    assert (s.max_concurrent_transforms, s.max_queue, s.threads) == (64, 64, 64 + 16)
    assert s.timeout_s == 3600 and s.batch_strategy == "MULTI_RECORD"
    # The queue is the job's concurrency at least, unless set (then it is the user's).
    assert settings({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "64",
                     "SAGEMAKER_MODEL_SERVER_MAX_QUEUE": "8"}).max_queue == 8
    # Outside batch mode the concurrency is only reported.
    assert settings({"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "64"}).max_queue == 32


def test_an_asynchronous_endpoints_limits():
    """1 GB bodies and an hour: the body timeout and body memory grow with the payload."""
    s = settings({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600"})
    assert s.max_payload_bytes == 1024 * MB and s.timeout_s == 3600
    assert s.body_timeout_s == 103  # 1024 MB at 10 MB/s
    assert s.body_memory_bytes == 3 * 1024 * MB  # one largest JSON body fits
    with pytest.raises(ValueError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB='1025' must be at most "
                                         "1024 \\(asynchronous inference's 1 GB\\)"):
        settings({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1025"})
    with pytest.raises(ValueError, match="SAGEMAKER_MODEL_SERVER_TIMEOUT='3601' must be at most "
                                         "3600"):
        settings({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "3601"})


@pytest.mark.parametrize("workers, gpus", [(1, 0), (2, 0), (4, 0), (1, 1), (8, 8)])
@pytest.mark.parametrize("payload_mb", [1, 2, 6, 20, 100])
def test_the_suggestion_fills_two_batches_per_worker_within_the_product_rule(workers, gpus,
                                                                             payload_mb):
    s = settings({"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), "SAGEMAKER_BATCH": "true",
                  "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(payload_mb)}, gpus=gpus)
    suggested = batch_transform.execution_parameters(s)
    concurrent, payload = suggested["MaxConcurrentTransforms"], suggested["MaxPayloadInMB"]
    assert payload == payload_mb and concurrent * payload <= 100
    assert concurrent == min(2 * workers * s.max_batch_size, 100 // payload_mb)
    assert s.max_queue >= concurrent  # no worker refuses the suggested concurrency


def test_the_suggestion_for_a_cpu_and_a_gpu_host():
    cpu = batch_transform.execution_parameters(settings({"SAGEMAKER_BATCH": "true"}))
    assert cpu == {"MaxConcurrentTransforms": 16, "BatchStrategy": "SINGLE_RECORD",
                   "MaxPayloadInMB": 6}
    gpu = batch_transform.execution_parameters(settings({"SAGEMAKER_BATCH": "true",
                                               "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"}, gpus=1))
    assert gpu["MaxConcurrentTransforms"] == 64  # 2 x 1 worker x batch 32
    # A payload over the service's 100 MB (an asynchronous endpoint's) is reported as 100.
    assert batch_transform.execution_parameters(settings({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"})) == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 100}


def test_gunicorns_timeout_follows_the_jobs():
    env = dict(os.environ, SAGEMAKER_BATCH="true", SAGEMAKER_MODEL_SERVER_TIMEOUT="1200",
               SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="40", SAGEMAKER_MODEL_SERVER_WORKERS="1",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "from serve import gunicorn_conf as g; "
                          "print(g.timeout, g.threads)"], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split()
    assert out == ["1210", "56"]


# ------------------------------------------------------------------ JSON Lines
@pytest.mark.parametrize("body, lines", [
    (b"", []),
    (b"a", [b"a"]),
    (b"a\n", [b"a"]),
    (b"a\r\nb\r\n", [b"a", b"b"]),
    (b"a\n\nb", [b"a", b"", b"b"]),
    (b"\n", [b""]),
    (b"a\n\n", [b"a", b""]),
])
def test_line_spans(body, lines):
    assert [body[s:e] for s, e in jsonlines.line_spans(body)] == lines


def b64_line(data: bytes, **options) -> bytes:
    return json.dumps({"b64": base64.b64encode(data).decode(), **options}).encode()


def test_a_record_is_an_image_and_its_options():
    image, doc = jsonlines.record(b64_line(b"\x89PNG...", k=3))
    assert image == b"\x89PNG..." and doc["k"] == 3


@pytest.mark.parametrize("line, reason", [
    (b"   ", "the line is empty"),
    (b"not json", "the line is not valid JSON"),
    (b"[1, 2]", 'expected {"b64": "<base64 image>"}'),
    (b'{"bytes": "x"}', 'expected {"b64": "<base64 image>"}'),
    (b'{"b64": ""}', '"b64" is empty'),
    (b'{"b64": "not base64!!"}', "invalid base64"),
    (b"[" * 5000 + b"]" * 5000, "JSON values"),
    (b"[" + b"1," * 100 + b"1]", "the line holds about 101 JSON values"),
])
def test_a_bad_record_is_a_400_for_its_line(line, reason):
    with pytest.raises(ClientError) as exc:
        jsonlines.record(line)
    assert exc.value.status == 400 and reason in exc.value.reason
