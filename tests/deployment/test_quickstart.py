"""The README's AWS quickstart, its deploy.py lines run in order against moto: from an account
with only the image and a bucket to an endpoint, and back to nothing. Where moto cannot play
SageMaker's part the line is adapted, each adaptation said below: ``data`` takes a small local
tree (no dogImages download here), ``train`` returns at once and moto completes the job, and
``predict`` is left to tests/deployment/test_predict.py, which sends it to the real server."""

from __future__ import annotations

import re
import shlex

import boto3
from PIL import Image

from tests.conftest import ROOT
from tests.deployment.conftest import BUCKET, REGION, REPO, run

START, END = "<!-- aws quickstart", "<!-- end aws quickstart -->"


def quickstart() -> list[list[str]]:
    """The README block's deploy.py lines as argv lists (comments dropped)."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(START):readme.index(END)]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith("python deploy.py ")]


def tiny_tree(root):
    for split in ("train", "valid", "test"):
        for i, breed in enumerate(("001.Affenpinscher", "002.Afghan_hound")):
            folder = root / split / breed
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (40 * i, 90, 160)).save(folder / "a.jpg")
    return root


def test_the_readme_quickstart_runs_from_nothing_to_an_endpoint_and_back(aws, capsys,
                                                                         tmp_path):
    steps = quickstart()
    assert [s[0] for s in steps] == ["data", "train", "deploy", "predict", "delete"]
    for argv in steps:
        verb = argv[0]
        if verb == "predict":
            continue  # moto's runtime answers a dummy body: test_predict.py covers it
        if verb == "data":
            argv = argv + ["--source", str(tiny_tree(tmp_path / "photos"))]
        if verb in ("train", "deploy"):
            argv = argv + ["--no-wait"]
        if verb == "delete":
            argv = argv + ["--yes"]  # no terminal to answer its question
        code, out, err = run(capsys, *argv)
        assert code == 0, (argv, out, err)
    assert re.search(r"deleted endpoint dog-breeds\b", out)
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_models()["Models"] == []
    left = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BUCKET,
                                                                  Prefix="dog-breeds/")
    assert left["KeyCount"] == 0
    repos = boto3.client("ecr", region_name=REGION).describe_repositories()["repositories"]
    assert REPO not in [r["repositoryName"] for r in repos]
