"""deploy.py report: the debugger report of a training job, from S3 (moto) to the terminal."""

from __future__ import annotations

import io
import tarfile

import boto3
import pytest

from tests.deployment.conftest import BUCKET, REGION, ROLE, run


def _job(name: str) -> None:
    boto3.client("sagemaker", region_name=REGION).create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})


@pytest.mark.model  # it reads a real training job's output
def test_report_downloads_and_prints_the_rules(aws, capsys, trained_job, tmp_path):  # noqa: F811
    """The output.tar.gz of a real training run (what SageMaker tars from /opt/ml/output/data)."""
    _job("dogs-1")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in (trained_job.output_dir / "data").rglob("*"):
            tar.add(path, arcname=str(path.relative_to(trained_job.output_dir / "data")),
                    recursive=False)
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key="output/dogs-1/output/output.tar.gz", Body=buf.getvalue())
    code, out, err = run(capsys, "report", "dogs-1", "--output-dir", str(tmp_path / "reports"))
    assert code == 0, err
    assert "0 of 12 rules triggered" in out
    for rule in ("VanishingGradient", "Overfit", "StepOutlier", "LowGPUUtilization"):
        assert rule in out
    html = tmp_path / "reports" / "dogs-1" / "report" / "report.html"
    assert html.is_file() and f"report: {html.resolve().as_uri()}" in out


def test_report_before_the_job_wrote_output_is_one_line(aws, capsys, tmp_path):  # noqa: F811
    _job("dogs-2")
    code, out, err = run(capsys, "report", "dogs-2", "--output-dir", str(tmp_path))
    assert code == 1 and "has written no output yet" in err and "Traceback" not in err


def test_report_of_an_unknown_job_is_one_line(aws, capsys, tmp_path):  # noqa: F811
    code, out, err = run(capsys, "report", "nope", "--output-dir", str(tmp_path))
    assert code == 1 and err.count("\n") == 1


def test_the_old_output_flag_still_works_and_says_its_new_name(aws, capsys, tmp_path):
    code, out, err = run(capsys, "report", "nope", "--output", str(tmp_path))
    assert code == 1 and "warning: --output is deprecated; use --output-dir" in err
