"""deploy.py transform end to end without AWS: moto holds the S3 folder and records the
validated requests, and the "service" that CreateTransformJob sets off is the real server,
started with the model's environment and the one the job's settings give it, fed by
tests/serve/transform_agent.py as SageMaker's agent feeds it. The summary deploy.py prints must
be the server's answers, and its accuracy per class the truth of the class folders."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests.conftest import start_server
from tests.deployment.conftest import BUCKET, REGION, run, transform_objects
from tests.helpers.serving import ARTIFACTS, cells
from tests.serve import transform_agent
from train.layout import readable_label

pytestmark = pytest.mark.model

PHOTOS_PER_CLASS = 5
STRATEGIES = {"SingleRecord": "SINGLE_RECORD", "MultiRecord": "MULTI_RECORD"}


class RealService:
    """After CreateTransformJob: the job's input folder copied out of moto's S3, the real
    server started with the environment SageMaker gives the container (the model's, the job's,
    and SAGEMAKER_BATCH with the job's payload, strategy and concurrency when set), the agent
    run over the files, and the .out files put under the job's output path."""

    def __init__(self, aws, model_dir: Path, work: Path):
        self.aws, self.model_dir, self.work = aws, model_dir, work
        self.s3 = boto3.client("s3", region_name=REGION)
        self.run = None
        aws.session.events.register("after-call.sagemaker.CreateTransformJob", self.transform)

    def transform(self, **_):
        request = self.aws.one("CreateTransformJob")
        model = self.aws.one("CreateModel")
        env = {**model["PrimaryContainer"]["Environment"], **request.get("Environment", {}),
               "SAGEMAKER_BATCH": "true",
               "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(request["MaxPayloadInMB"]),
               "SAGEMAKER_BATCH_STRATEGY": STRATEGIES[request["BatchStrategy"]],
               "SERVE_COMPILE": "off", "SERVE_METRICS": "off"}  # a faster start here
        if "MaxConcurrentTransforms" in request:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(request["MaxConcurrentTransforms"])
        inputs, outputs = self.work / "in", self.work / "out"
        for key, body in transform_objects(self.s3, request):
            path = inputs / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        job = transform_agent.Job(
            content_type=request["TransformInput"]["ContentType"],
            split_type=request["TransformInput"]["SplitType"],
            strategy=request["BatchStrategy"],
            max_concurrent=request.get("MaxConcurrentTransforms"),
            max_payload_mb=request["MaxPayloadInMB"],
            accept=request["TransformOutput"]["Accept"],
            assemble_with=request["TransformOutput"]["AssembleWith"])
        server = start_server(self.model_dir, self.work / "serve.log", env=env)
        try:
            self.run = transform_agent.run(server.url, job, inputs, outputs)
        finally:
            server.stop()
        out_bucket, out_prefix = request["TransformOutput"]["S3OutputPath"][5:].split("/", 1)
        for path in outputs.rglob("*.out"):
            self.s3.put_object(Bucket=out_bucket, Body=path.read_bytes(),
                               Key=out_prefix + path.relative_to(outputs).as_posix())


@pytest.mark.parametrize("mode", ["one-a-request", "jsonlines"])
def test_deploy_py_transform_through_the_real_server(aws, trained_model_dir, digits_dir,
                                                     tmp_path, capsys, mode):
    s3 = boto3.client("s3", region_name=REGION)
    truth = {}
    for folder in sorted((digits_dir / "test").iterdir()):
        for path in sorted(folder.glob("*.jpg"))[:PHOTOS_PER_CLASS]:
            key = f"{folder.name}/{path.name}"
            s3.put_object(Bucket=BUCKET, Key=f"digits/{key}", Body=path.read_bytes())
            truth[key] = readable_label(folder.name)
    service = RealService(aws, trained_model_dir, tmp_path)
    options = ["--jsonlines"] if mode == "jsonlines" else []
    code, out, err = run(capsys, "transform", "--input", f"s3://{BUCKET}/digits/",
                         "--model-data", f"s3://{BUCKET}/model.tar.gz", "--job-name",
                         f"digits-{mode}", *options)
    (ARTIFACTS / f"transform-summary-{mode}.txt").write_text(out)
    assert code == 0, out + err
    run_ = service.run
    assert run_.failed == {} and set(run_.statuses) == {200}
    # The container's suggestion for one CPU worker at this payload (serve/batch_transform.py).
    payload = 1 if mode == "one-a-request" else 6
    assert run_.parameters["MaxConcurrentTransforms"] == min(16, 100 // payload)
    assert run_.in_flight_max <= run_.parameters["MaxConcurrentTransforms"]
    rows = cells(out)
    answers = served_answers(tmp_path / "out", mode)
    assert len(answers) == len(truth) == 10 * PHOTOS_PER_CLASS
    for key, (label, probability) in answers.items():
        assert rows[key] == [label, f"{probability:.3f}"], key
    for name in sorted(set(truth.values())):
        keys = [k for k, t in truth.items() if t == name]
        correct = sum(answers[k][0] == name for k in keys)
        assert rows[name] == [str(len(keys)), str(correct), f"{correct / len(keys):.3f}"]
    correct = sum(answers[k][0] == t for k, t in truth.items())
    assert rows["all"] == [str(len(truth)), str(correct), f"{correct / len(truth):.3f}"]
    assert correct / len(truth) > 0.5  # the digits model reads digits
    assert f"{len(truth)} photos, 0 failed" in out


def served_answers(outputs: Path, mode: str) -> dict[str, tuple[str, float]]:
    """The top-1 (label, probability) the server gave each photo, from the .out files (for
    JSON Lines, line by line with the photos of the index deploy.py kept in S3)."""
    s3 = boto3.client("s3", region_name=REGION)
    if mode != "jsonlines":
        return {str(out.relative_to(outputs))[:-len(".out")]: (top["label"], top["probability"])
                for out in outputs.rglob("*.out")
                for top in [json.loads(out.read_text())["predictions"][0]["top_k"][0]]}
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]
             if o["Key"].endswith(".index.json")]
    index = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    answers = {}
    for name, photos in index.items():
        lines = (outputs / f"{name}.out").read_text().splitlines()
        assert len(lines) == len(photos)
        for photo, line in zip(photos, lines):
            top = json.loads(line)["top_k"][0]
            answers[photo] = (top["label"], top["probability"])
    return answers
