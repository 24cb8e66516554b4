"""deploy.py compile: a Processing job of the image's own `compile` entry on the endpoint's
instance type, from a model.tar.gz to a new one that carries the compiled programs."""

from __future__ import annotations

import pytest

from tests.deployment.conftest import BUCKET, IMAGE, ROLE, run


def test_compile_runs_the_images_compile_entry_on_the_instance_type(aws, capsys):
    model_data = f"s3://{BUCKET}/dog-breeds/output/dogs-1/output/model.tar.gz"
    code, out, err = run(capsys, "compile", "--no-wait", "--model-data", model_data,
                         "--instance-type", "ml.c5.xlarge", "--max-batch-size", "16",
                         "--job-name", "dogs-compile-1")
    assert code == 0, err
    job = aws.one("CreateProcessingJob")
    assert job["ProcessingJobName"] == "dogs-compile-1"
    assert job["AppSpecification"] == {"ImageUri": IMAGE, "ContainerEntrypoint": ["compile"]}
    assert job["RoleArn"] == ROLE
    cluster = job["ProcessingResources"]["ClusterConfig"]
    assert (cluster["InstanceType"], cluster["InstanceCount"]) == ("ml.c5.xlarge", 1)
    (source,) = job["ProcessingInputs"]
    assert source["S3Input"]["S3Uri"] == model_data
    assert source["S3Input"]["LocalPath"] == "/opt/ml/processing/input/model"
    (output,) = job["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output"
    assert output["S3Output"]["S3Uri"] == f"s3://{BUCKET}/dog-breeds/compiled/dogs-compile-1"
    # The endpoint's batching options pick the sizes compiled.
    assert job["Environment"] == {"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "16"}
    assert (f"--model-data s3://{BUCKET}/dog-breeds/compiled/dogs-compile-1/model.tar.gz "
            "--instance-type ml.c5.xlarge") in out


@pytest.mark.parametrize("argv, message", [
    (["--instance-type", "c7i.xlarge"], "a SageMaker instance type such as ml.c7i.xlarge"),
    (["--instance-type", "ml.c7g.xlarge"], "ml.c7g.xlarge has Graviton (arm64) CPUs; the image "
                                           "is built for x86_64 (amd64)"),
    (["--instance-type", "ml.c5.xlarge", "--max-batch-size", "0"],
     "--max-batch-size 0: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE='0' must be at least 1"),
])
def test_compile_refuses_bad_options_in_one_line_before_any_job(aws, capsys, argv, message):
    code, _, err = run(capsys, "compile", "--model-data", "s3://b/m.tar.gz", *argv)
    assert code == 1 and message in err, err
    assert ("sagemaker", "CreateProcessingJob") not in aws.calls
