"""container/build_and_push.sh against stand-ins for the AWS CLI and the Docker CLI (shell
scripts on PATH that answer as they do and record their calls): it pushes, then prints the
image's size unpacked and in ECR, and warns over Serverless Inference's 10 GiB limit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

GIB = 1024**3
AWS = """#!/bin/sh
echo "aws $*" >> "$CALLS"
case "$1 $2" in
  "sts get-caller-identity") echo 123456789012 ;;
  "configure get") echo eu-west-1 ;;
  "ecr describe-repositories") exit 0 ;;
  "ecr get-login-password") echo token ;;
  "ecr describe-images") echo "$ECR_SIZE" ;;
  *) exit 1 ;;
esac
"""
DOCKER = """#!/bin/sh
echo "docker $*" >> "$CALLS"
# docker login --password-stdin reads the password: exiting first would break the pipe to aws
# (SIGPIPE), which the script's pipefail then reports as a failed login.
[ "$1" = login ] && cat > /dev/null
case "$1 $2" in
  "image inspect") echo "$LOCAL_SIZE" ;;
  *) exit 0 ;;
esac
"""


def push(tmp_path: Path, local_size: int, ecr_size: str, *args: str, **extra: str
         ) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("aws", AWS), ("docker", DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(tmp_path / "calls"),
               LOCAL_SIZE=str(local_size), ECR_SIZE=ecr_size, AWS_REGION="eu-west-1",
               DEPLOY_CONFIG=str(tmp_path / "no-deploy.toml"), DEPLOY_REGION="",
               DEPLOY_REPOSITORY="", DEPLOY_TAG="")
    env.update(extra)
    return subprocess.run(["bash", str(ROOT / "container" / "build_and_push.sh"),
                           *(args or ("dogs", "v1"))],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("local_size, ecr_size, warns", [
    (7 * GIB, str(4 * GIB), False),
    (11 * GIB, str(6 * GIB), True),  # unpacked over the limit: it may be the size compared
    (9 * GIB, "None", False),  # ECR did not say
])
def test_the_pushed_image_size_is_printed_and_over_10_gib_warned(tmp_path, local_size, ecr_size,
                                                                  warns):
    done = push(tmp_path, local_size, ecr_size)
    assert done.returncode == 0, done.stderr
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/dogs:v1"
    assert done.stdout.splitlines()[-1] == image
    expected = f"pushed {image}: {local_size / GIB:.2f} GiB unpacked"
    if ecr_size != "None":
        expected += f", {int(ecr_size) / GIB:.2f} GiB in ECR (compressed)"
    assert expected in done.stdout
    assert ("over SageMaker Serverless Inference's 10 GiB limit" in done.stderr) == warns
    calls = (tmp_path / "calls").read_text()
    assert f"docker push {image}" in calls
    assert "aws ecr describe-images --repository-name dogs --image-ids imageTag=v1" in calls


def test_the_aws_clis_errors_go_to_a_file_of_the_runs_own_not_a_fixed_tmp_path(tmp_path):
    """Another user's run on a shared host made the fixed /tmp/build_and_push.err first: ours
    could not write it and died saying "no usable AWS credentials". Each run now has its own
    file, removed at exit."""
    tmp = tmp_path / "tmp"
    (tmp / "build_and_push.err").mkdir(parents=True)  # in the way, as another user's file was
    assert "/tmp/build_and_push.err" not in (ROOT / "container" / "build_and_push.sh").read_text()
    done = push(tmp_path, GIB, str(GIB), TMPDIR=str(tmp))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp.iterdir()) == ["build_and_push.err"]  # ours is gone


def test_the_cuda12_flavour_gets_its_build_arguments_and_its_own_tag(tmp_path):
    done = push(tmp_path, GIB, str(GIB), "--cuda12", "--build-arg", "PRETRAINED_ARCH=", "dogs",
                "v1")
    assert done.returncode == 0, done.stderr
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/dogs:v1-cu12"
    assert done.stdout.splitlines()[-1] == image
    build = next(line for line in (tmp_path / "calls").read_text().splitlines()
                 if line.startswith("docker build"))
    assert ("--build-arg TORCH_CUDA=cu128 --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-"
            "ubuntu24.04 --build-arg PRETRAINED_ARCH= -t dogs:v1-cu12 ." in build), build


def test_the_region_repository_and_tag_are_deploy_pys(tmp_path):
    """deploy.toml's region wins over the AWS CLI's, as in deploy.py, and DEPLOY_REGION over
    the file; the repository and tag default to the file's."""
    config = tmp_path / "deploy.toml"
    config.write_text('region = "us-west-2"\nrepository = "my-dogs"\ntag = "t7"\n')
    done = push(tmp_path, GIB, str(GIB), "", DEPLOY_CONFIG=str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-dogs:t7"
    assert "pushing to ECR in us-west-2" in done.stdout
    done = push(tmp_path, GIB, str(GIB), "dogs", "v1", DEPLOY_CONFIG=str(config),
                DEPLOY_REGION="ap-south-1")
    assert done.stdout.splitlines()[-1] == "123456789012.dkr.ecr.ap-south-1.amazonaws.com/dogs:v1"


def test_an_unknown_option_is_refused(tmp_path):
    done = push(tmp_path, GIB, str(GIB), "--cuda11")
    assert done.returncode == 1 and "unknown option --cuda11" in done.stderr
