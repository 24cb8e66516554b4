"""The real server in batch mode (the environment a transform job sets), fed as SageMaker's
agent feeds it (tests/serve/transform_agent.py): whole files at the concurrency the container
suggests, JSON Lines split into lines one a request or many, the .out files checked against the
answer each photo gets alone; and the payload cap a job raises."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import start_server
from tests.serve import transform_agent
from tests.helpers.serving import access_lines, call, save_artifact

pytestmark = pytest.mark.model

PHOTOS_PER_CLASS = 5
# What a transform job with MaxPayloadInMB 20 and neither MaxConcurrentTransforms nor
# BatchStrategy sets (developer guide, "Use your own inference code with batch transform").
JOB_ENV = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
           # Compilation is the endpoint tests' business; eager starts faster.
           "SERVE_COMPILE": "off"}


@pytest.fixture(scope="module")
def batch_server(trained_model_dir, tmp_path_factory):
    s = start_server(trained_model_dir, tmp_path_factory.mktemp("batch") / "serve.log",
                     env=JOB_ENV)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def photos(digits_dir, tmp_path_factory):
    """Digit photos of the test split, ``PHOTOS_PER_CLASS`` per class folder, as a transform
    job's input prefix."""
    root = tmp_path_factory.mktemp("input")
    for folder in sorted((digits_dir / "test").iterdir()):
        (root / folder.name).mkdir()
        for path in sorted(folder.glob("*.jpg"))[:PHOTOS_PER_CLASS]:
            shutil.copy(path, root / folder.name / path.name)
    return root


@pytest.fixture(scope="module")
def alone(batch_server, photos):
    """Each photo's answer when it is sent alone, one request at a time (with all
    probabilities): the reference the transform's answers must equal."""
    answers = {}
    for path in sorted(photos.rglob("*.jpg")):
        status, body, _ = call(batch_server.url + "/invocations", path.read_bytes(),
                               {"Content-Type": "image/jpeg",
                                "X-Amzn-SageMaker-Custom-Attributes": "probabilities=true"})
        assert status == 200, body
        answers[str(path.relative_to(photos))] = body["predictions"][0]
    return answers


def assert_same_answer(prediction: dict, reference: dict) -> None:
    """Same top-1 breed and the same probabilities (to batching's float noise)."""
    assert prediction["top_k"][0]["label"] == reference["top_k"][0]["label"]
    if "probabilities" in prediction:
        assert np.allclose(prediction["probabilities"], reference["probabilities"], atol=1e-4)
    else:
        assert abs(prediction["top_k"][0]["probability"] -
                   reference["top_k"][0]["probability"]) < 1e-4


def noise_png(megabytes: float) -> bytes:
    """A PNG of random pixels (incompressible) of about ``megabytes`` MB."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_a_10_mb_png_is_413_in_real_time_and_200_in_batch_mode(server, batch_server):
    png = noise_png(10)
    assert 10 * 2**20 <= len(png) < 11 * 2**20
    headers = {"Content-Type": "image/png"}
    status, body, real_time_ms = call(server.url + "/invocations", png, headers)
    assert status == 413, body
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in body["reason"]
    status, body, batch_ms = call(batch_server.url + "/invocations", png, headers)
    assert status == 200, body
    assert len(body["predictions"]) == 1
    save_artifact("batch-10mb-png.json", {"bytes": len(png), "real_time": 413,
                                          "real_time_ms": round(real_time_ms, 1),
                                          "batch": 200, "batch_ms": round(batch_ms, 1)})


def test_split_none_at_the_suggested_concurrency_answers_every_photo(batch_server, photos,
                                                                      alone, tmp_path):
    """A job that leaves MaxConcurrentTransforms to the container: one request per photo, as
    many in flight as it suggests, none refused, batched, each .out the photo's own answer."""
    before = len(access_lines(batch_server))
    job = transform_agent.Job(content_type="image/jpeg", accept="application/json")
    run = transform_agent.run(batch_server.url, job, photos, tmp_path / "out")
    assert run.parameters == {"MaxConcurrentTransforms": 5, "BatchStrategy": "SingleRecord",
                              "MaxPayloadInMB": 20}  # 100 // 20
    assert run.failed == {} and run.statuses == {200: len(alone)}
    assert run.in_flight_max == 5
    for relative, reference in alone.items():
        answer = json.loads((tmp_path / "out" / f"{relative}.out").read_bytes())
        [prediction] = answer["predictions"]
        assert_same_answer(prediction, reference)
    sizes = [e["batch_size"] for e in access_lines(batch_server)[before:]
             if e["path"] == "/invocations"]
    assert max(sizes) > 1, sizes  # concurrent single-photo requests ran in shared batches
    save_artifact("transform-split-none.json", {
        "photos": len(alone), **run.parameters, "seconds": round(run.seconds, 2),
        "images_per_s": round(len(alone) / run.seconds, 1), "batch_size_max": max(sizes)})


def jsonl(photos, alone, bad: dict[int, bytes], records: int = 100) -> bytes:
    """A JSON Lines file of ``records`` lines cycling through the photos, the lines at
    ``bad``'s (0-based) indexes replaced."""
    names = list(alone)
    lines = []
    for i in range(records):
        data = (photos / names[i % len(names)]).read_bytes()
        lines.append(bad.get(i, json.dumps({"b64": base64.b64encode(data).decode(),
                                            "probabilities": True}).encode()))
    return b"\n".join(lines) + b"\n"


BAD_LINES = {9: b'{"b64": "not base64!!"}',
             49: json.dumps({"b64": base64.b64encode(b"no image here").decode()}).encode(),
             77: b"{broken json"}


@pytest.mark.parametrize("strategy, payload_mb", [("MultiRecord", 1), ("SingleRecord", None)])
def test_json_lines_answer_every_line_in_order_and_bad_lines_on_their_line(
        batch_server, photos, alone, tmp_path, strategy, payload_mb):
    """SplitType Line: 100 records in one file, three of them bad. The .out file has 100
    lines, in order: each good one the photo's own answer, each bad one an error naming it."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photos.jsonl").write_bytes(jsonl(photos, alone, BAD_LINES))
    job = transform_agent.Job(content_type="application/jsonlines", split_type="Line",
                              strategy=strategy, max_payload_mb=payload_mb,
                              accept="application/jsonlines", assemble_with="Line")
    run = transform_agent.run(batch_server.url, job, tmp_path / "in", tmp_path / "out")
    assert run.failed == {}, run.failed
    expected_requests = 100 if strategy == "SingleRecord" else len(
        transform_agent.records((tmp_path / "in" / "photos.jsonl").read_bytes(), job,
                                 2**20))
    assert run.statuses == {200: expected_requests}
    out = (tmp_path / "out" / "photos.jsonl.out").read_bytes().decode().splitlines()
    assert len(out) == 100
    names = list(alone)
    for i, line in enumerate(out):
        answer = json.loads(line)
        if i in BAD_LINES:
            assert answer["status"] == 400 and answer["error"] == "bad_request", answer
            assert answer["reason"].startswith("request line "), answer
        else:
            assert_same_answer(answer, alone[names[i % len(names)]])
    reasons = [json.loads(out[i])["reason"] for i in sorted(BAD_LINES)]
    assert "invalid base64" in reasons[0] and "not an image" in reasons[1]
    assert "not valid JSON" in reasons[2]
    save_artifact(f"transform-jsonlines-{strategy}.json", {
        "records": 100, "requests": run.requests, **run.parameters,
        "seconds": round(run.seconds, 2), "errors": len(BAD_LINES)})
