"""deploy.py transform against moto (with botocore's request validation): the model, the
CreateTransformJob request, the wait with progress, and the summary read from the .out files
the service writes (written here by a stand-in for the service, from the request itself)."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from tests.conftest import DOG_PHOTOS
from tests.deployment.conftest import BUCKET, REGION, is_image, run, transform_objects
from tests.helpers.serving import cells

# The sample photos in class folders of the dogImages layout, and one file that is no photo.
FOLDERS = {"Brittany": "037.Brittany", "Labrador_retriever": "096.Labrador_retriever",
           "Welsh_springer_spaniel": "131.Welsh_springer_spaniel",
           "American_water_spaniel": "009.American_water_spaniel",
           "Curly-coated_retriever": "056.Curly-coated_retriever"}
INPUT = f"s3://{BUCKET}/photos/"


def photo_key(path) -> str:
    breed = path.stem.rsplit("_", 1)[0]
    return f"{FOLDERS[breed]}/{path.name}"


@pytest.fixture
def photos(aws):
    s3 = boto3.client("s3", region_name=REGION)
    for path in DOG_PHOTOS:
        s3.put_object(Bucket=BUCKET, Key=f"photos/{photo_key(path)}", Body=path.read_bytes())
    # What else lies in real folders: a note, and the resource fork a Mac copies beside a photo.
    s3.put_object(Bucket=BUCKET, Key="photos/README.txt", Body=b"not a photo")
    s3.put_object(Bucket=BUCKET, Key="photos/037.Brittany/._Brittany_02625.jpg",
                  Body=b"\x00\x05\x16\x07 Mac OS X resource fork")
    return s3


def answer(label: str, probability: float = 0.9) -> dict:
    return {"model_version": "v1", "predictions": [
        {"top_k": [{"label": label, "index": 0, "probability": probability}]}]}


def label_of(key: str) -> str:
    """A fake model's answer: the right breed, except for the Labradors, called Brittanys."""
    breed = key.split("/")[-1].rsplit("_", 1)[0].replace("_", " ")
    return "Brittany" if breed.startswith("Labrador") else breed


class FakeService:
    """What SageMaker does after CreateTransformJob, as far as deploy.py sees it: the .out file
    of each object the job reads (conftest.transform_objects), but for ``fail`` and any object
    that is no image (serve answers it 400, which fails the object), and the job's status
    (InProgress on the first describe, then Failed with a reason when an object failed, else
    Completed)."""

    def __init__(self, aws, s3, fail: str | None = None):
        self.aws, self.s3, self.fail = aws, s3, fail
        self.describes = 0
        self.failed: list[str] = []
        aws.session.events.register("after-call.sagemaker.CreateTransformJob", self.write)
        aws.session.events.register("before-call.sagemaker.DescribeTransformJob",
                                    self.describe)

    @property
    def request(self) -> dict:
        return self.aws.one("CreateTransformJob")

    def write(self, **_):
        lines_in = self.request["TransformInput"]["SplitType"] == "Line"
        out_bucket, out_prefix = self.request["TransformOutput"]["S3OutputPath"][5:].split("/", 1)
        source = self.request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        for key, body in transform_objects(self.s3, self.request):
            if key == self.fail or not (lines_in or is_image(body)):
                self.failed.append(key)
                continue
            if lines_in:
                bucket, prefix = source[5:].split("/", 1)
                index = json.loads(self.s3.get_object(
                    Bucket=bucket, Key=prefix.rstrip("/") + ".index.json")["Body"].read())
                lines = [json.dumps(answer(label_of(photo))["predictions"][0] |
                                    {"model_version": "v1"}) for photo in index[key]]
                lines[1] = json.dumps({"status": 400, "error": "bad_request",
                                       "reason": "request line 2: the body is not an image"})
                assert len(body.splitlines()) == len(lines)
                out = "\n".join(lines) + "\n"
            else:
                out = json.dumps(answer(label_of(key)))
            self.s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}{key}.out", Body=out)

    def describe(self, **_):
        self.describes += 1
        status = ("InProgress" if self.describes == 1 else "Failed" if self.failed else
                  "Completed")
        desc = {"TransformJobName": self.request["TransformJobName"],
                "TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/x",
                "TransformJobStatus": status, "ModelName": self.request["ModelName"],
                "TransformInput": self.request["TransformInput"],
                "TransformOutput": self.request["TransformOutput"],
                "TransformResources": self.request["TransformResources"],
                "CreationTime": "2026-12-01T10:00:00Z"}
        if status == "Failed":
            desc["FailureReason"] = "ClientError: See job logs for more information"
        return AWSResponse("https://sagemaker", 200, {}, None), desc


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    from deployment import transform

    monkeypatch.setattr(transform, "POLL_S", 0.01)


def test_one_photo_a_request_over_class_folders(aws, photos, capsys):
    service = FakeService(aws, photos, fail="131.Welsh_springer_spaniel/"
                                            "Welsh_springer_spaniel_08203.jpg")
    code, out, err = run(capsys, "transform", "--input", INPUT, "--model-data",
                         f"s3://{BUCKET}/m.tar.gz", "--job-name", "dogs-t1")
    assert code == 1, err  # a photo failed
    model = aws.one("CreateModel")
    assert model["ModelName"] == "dogs-t1"
    env = model["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "600"
    assert env["SERVE_ENDPOINT_NAME"] == "dogs-t1"
    request = service.request
    assert "MaxConcurrentTransforms" not in request  # the container suggests it
    assert request["MaxPayloadInMB"] == 1  # the largest photo, rounded up to a MB
    assert request["BatchStrategy"] == "SingleRecord"
    assert request["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 600,
                                            "InvocationsMaxRetries": 1}
    manifest = f"s3://{BUCKET}/dog-breeds/transform-input/dogs-t1.manifest"
    assert request["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile", "S3Uri": manifest}},
        "ContentType": "image/jpeg", "SplitType": "None", "CompressionType": "None"}
    assert json.loads(photos.get_object(Bucket=BUCKET, Key="dog-breeds/transform-input/"
                                        "dogs-t1.manifest")["Body"].read()) == \
        [{"prefix": INPUT}] + sorted(photo_key(p) for p in DOG_PHOTOS)
    assert request["TransformOutput"] == {
        "S3OutputPath": f"s3://{BUCKET}/dog-breeds/transform-output/dogs-t1/",
        "Accept": "application/json", "AssembleWith": "None"}
    assert request["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}
    assert "2 objects that are not photos are left out" in err
    assert "transform job dogs-t1: InProgress" in err and "transform job dogs-t1: Failed" in err
    rows = cells(out)
    for path in DOG_PHOTOS:
        expected = ["-", "-"] if "Welsh" in path.name else [label_of(path.name), "0.900"]
        assert rows[photo_key(path)] == expected, out
    assert "7 photos, 1 failed" in out
    assert ("failed: 131.Welsh_springer_spaniel/Welsh_springer_spaniel_08203.jpg: no answer: "
            "the job failed on it (ClientError: See job logs for more information)") in out
    assert rows["Brittany"] == ["1", "1", "1.000"]
    assert rows["Labrador retriever"] == ["3", "0", "0.000"]
    assert rows["all"] == ["7", "3", "0.429"]  # 3 Labradors wrong, one photo failed
    assert "deleted model dogs-t1" in out
    assert aws.calls[("sagemaker", "DeleteModel")]


def test_json_lines_pack_the_photos_and_a_bad_line_fails_only_its_photo(aws, photos, capsys):
    service = FakeService(aws, photos)
    code, out, err = run(capsys, "transform", "--input", INPUT.rstrip("/"), "--jsonlines",
                         "--model-data", f"s3://{BUCKET}/m.tar.gz", "--job-name", "dogs-t2",
                         "--invocation-timeout", "1200")
    assert code == 1, err
    request = service.request
    packed = f"s3://{BUCKET}/dog-breeds/transform-input/dogs-t2/"
    assert request["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": packed}},
        "ContentType": "application/jsonlines", "SplitType": "Line", "CompressionType": "None"}
    assert request["BatchStrategy"] == "MultiRecord" and request["MaxPayloadInMB"] == 6
    assert request["TransformOutput"]["AssembleWith"] == "Line"
    assert request["TransformOutput"]["Accept"] == "application/jsonlines"
    assert request["ModelClientConfig"]["InvocationsTimeoutInSeconds"] == 1200
    body = photos.get_object(Bucket=BUCKET, Key="dog-breeds/transform-input/dogs-t2/"
                                                "photos-00001.jsonl")["Body"].read()
    lines = body.decode().splitlines()
    keys = sorted(photo_key(p) for p in DOG_PHOTOS)
    assert [base64.b64decode(json.loads(line)["b64"]) for line in lines] == [
        (DOG_PHOTOS[0].parent / key.split("/")[1]).read_bytes() for key in keys]
    assert f"7 photos from {INPUT} (1 JSON Lines files" in out
    assert f"failed: {keys[1]}: request line 2: the body is not an image" in out
    assert "7 photos, 1 failed" in out


def test_attach_waits_for_a_job_started_without_waiting(aws, photos, capsys):
    FakeService(aws, photos)
    code, out, err = run(capsys, "transform", "--input", INPUT, "--model-data",
                         f"s3://{BUCKET}/m.tar.gz", "--job-name", "dogs-t3", "--no-wait")
    assert code == 0, err
    assert "python deploy.py transform --attach dogs-t3" in out
    assert not aws.calls[("sagemaker", "DeleteModel")]
    code, out, err = run(capsys, "transform", "--attach", "dogs-t3")
    assert "7 photos, 0 failed" in out and code == 0  # wrong answers are no failures
    assert "deleted model dogs-t3" in out


def test_files_that_are_no_photos_under_the_prefix_do_not_fail_the_job(aws, photos, capsys):
    """Issue 36 (3): a README.txt and a ._photo.jpg under the input prefix. The job reads a
    manifest of the photos only, so it completes; read as the whole prefix, the two non-images
    would each get a 400 and fail the job."""
    service = FakeService(aws, photos)
    code, out, err = run(capsys, "transform", "--input", INPUT, "--model-data",
                         f"s3://{BUCKET}/m.tar.gz", "--job-name", "dogs-t4")
    assert service.failed == [] and code == 0, out + err
    assert "transform job dogs-t4: Completed" in out and "7 photos, 0 failed" in out


def test_a_job_that_does_not_start_takes_its_model_with_it(aws, photos, capsys):
    """CreateTransformJob refused after the job's model was made: the model goes too."""
    from botocore.exceptions import ClientError

    def refuse(**_):
        raise ClientError({"Error": {"Code": "ResourceLimitExceeded",
                                     "Message": "transform jobs: 0 of ml.m5.xlarge left"}},
                          "CreateTransformJob")

    aws.session.events.register("before-call.sagemaker.CreateTransformJob", refuse)
    code, out, err = run(capsys, "transform", "--input", INPUT, "--model-data",
                         f"s3://{BUCKET}/m.tar.gz", "--job-name", "dogs-t5")
    assert code == 1 and "ResourceLimitExceeded" in err, out + err
    assert "deleted model dogs-t5" in out
    assert boto3.client("sagemaker", region_name=REGION).list_models()["Models"] == []


@pytest.mark.parametrize("options, line", [
    (["--instance-type", "ml.g5.xlarge"],
     "ml.g5.xlarge: no TransformAmiVersion runs NVIDIA driver >= 580, which the image's CUDA "
     "13 needs (there are al2-ami-sagemaker-batch-gpu-470 (driver 470), "
     "al2-ami-sagemaker-batch-gpu-535 (driver 535)): use a CPU instance type or a CUDA 12 "
     "build of the image (build argument TORCH_CUDA, docs/platform.md)"),
    (["--invocation-timeout", "4000"],
     "--invocation-timeout 4000: seconds from 1 to 3600 (SageMaker's limit for transform jobs "
     "and asynchronous endpoints)"),
    (["--max-batch-size", "0"],
     "--max-batch-size 0: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE='0' must be at least 1; the "
     "transform job's container would refuse to start"),
    (["--instance-count", "0"], "--instance-count 0: at least 1"),
])
def test_what_the_job_would_refuse_is_one_line_before_any_aws_call(aws, capsys, options, line):
    code, _, err = run(capsys, "transform", "--input", INPUT, "--model-data", "s3://b/m.tar.gz",
                       *options)
    assert (code, err) == (1, f"error: {line}\n")
    assert not aws.calls


def test_a_cuda_12_image_runs_on_a_gpu_with_the_535_ami(aws, photos, capsys):
    service = FakeService(aws, photos)
    code, out, err = run(capsys, "transform", "--input", INPUT, "--model-data",
                         f"s3://{BUCKET}/m.tar.gz", "--instance-type", "ml.g5.xlarge",
                         "--image-cuda", "12", "--no-wait")
    assert code == 0, err
    assert service.request["TransformResources"] == {
        "InstanceType": "ml.g5.xlarge", "InstanceCount": 1,
        "TransformAmiVersion": "al2-ami-sagemaker-batch-gpu-535"}


def test_no_photos_is_one_line(aws, capsys):
    code, _, err = run(capsys, "transform", "--input", f"s3://{BUCKET}/nothing/",
                       "--model-data", "s3://b/m.tar.gz")
    assert code == 1 and err == (f"error: no photos under s3://{BUCKET}/nothing/ (0 objects, "
                                 "none with an image extension such as .jpg or .png)\n")
