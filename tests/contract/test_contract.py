"""The contract between train and serve (contract/): what the training job writes passes the
checks the server loads with, the precision table is whole, and the preprocessing both sides run
gives the same pixels through either door."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from contract import artifact, precisions, preprocess
from tests.conftest import DOG_PHOTOS, write_untrained_artifact


def test_the_artifact_train_writes_passes_the_checks_serve_loads_with(tmp_path):
    model_dir = write_untrained_artifact(tmp_path / "model", 3)
    manifest = artifact.read_manifest(model_dir)
    assert (manifest["format"], manifest["format_version"]) == (artifact.FORMAT,
                                                                artifact.FORMAT_VERSION)
    assert manifest["input"]["max_batch"] == artifact.MAX_BATCH
    artifact.check_program(model_dir / manifest["program"], manifest["program_sha256"],
                           "program_sha256")
    (model_dir / artifact.MANIFEST).write_text(json.dumps(dict(manifest, format="other/model")))
    with pytest.raises(artifact.ArtifactError, match="field 'format'"):
        artifact.read_manifest(model_dir)
    (model_dir / artifact.MANIFEST).unlink()
    with pytest.raises(artifact.ArtifactMissing):
        artifact.read_manifest(model_dir)


def test_every_precision_autocasts_to_a_torch_dtype_or_runs_its_own_program():
    assert precisions.NAMES[0] == "fp32" and len(set(precisions.NAMES)) == len(precisions.NAMES)
    for p in precisions.PRECISIONS:
        assert (p.autocast is None) or isinstance(p.autocast_dtype(), torch.dtype), p
        assert not (p.autocast and p.program), p  # one way to run, not two
        assert p.program is None or artifact.plain_file_name(p.program), p
    assert precisions.autocast_dtype("bf16") is torch.bfloat16
    assert [p.name for p in precisions.measured_on("cpu")] == ["fp32", "bf16"]
    assert [p.name for p in precisions.measured_on("cuda")] == ["fp32", "bf16", "fp16"]
    assert [p.name for p in precisions.with_programs()] == ["int8"]
    record = {"int8": {"program": "model-int8.pt2"}, "bf16": {"top1": 0.9}}
    assert precisions.program_of(record, "int8") == "model-int8.pt2"
    assert precisions.program_of({"int8": {"program": "../x.pt2"}}, "int8") is None
    with pytest.raises(ValueError, match="expected one of fp32, bf16, fp16, int8"):
        precisions.get("int4")


def _rotated_png() -> bytes:
    """A grey-and-alpha PNG with an EXIF orientation: conversion, compositing and rotation."""
    img = Image.new("LA", (90, 60), (40, 255))
    img.paste((200, 128), (0, 0, 30, 60))
    exif = Image.Exif()
    exif[preprocess.ORIENTATION_TAG] = 6
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("body", [p.read_bytes() for p in DOG_PHOTOS[:3]] + [_rotated_png()])
def test_the_training_jobs_decoding_gives_the_servers_pixels(body):
    """The drift baseline (train/export/baseline.py) decodes training photos through the contract;
    serve decodes requests through serve/decode.py: the same pixels."""
    from serve.decode import decode

    geometry = preprocess.Geometry(64, 56)
    with Image.open(io.BytesIO(body)) as img:
        turn = preprocess.orientation(img, body)
        preprocess.draft(img, geometry.resize)
        mine = preprocess.model_input(img, geometry, turn)
    served = decode(body, geometry, 10**9, 10**9)
    assert mine.shape == (56, 56, 3) and mine.dtype == np.uint8
    np.testing.assert_array_equal(mine, served)
