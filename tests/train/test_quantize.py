"""The int8 program's inputs and its place in the artifact (train/export/quantize.py,
train/export/artifact.py); the trained model's int8 accuracy is checked in
tests/serve/test_precision.py."""

from __future__ import annotations

import torch
from PIL import Image

from tests.conftest import write_untrained_artifact
from train import data
from train.export import artifact, quantize


def test_an_older_jobs_int8_program_does_not_survive_a_new_artifact(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / artifact.INT8_PROGRAM).write_bytes(b"an older job's program")
    write_untrained_artifact(model_dir, 2)
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.pt2"]


def test_calibration_spreads_over_the_channel_and_skips_unreadable_photos(tmp_path):
    pre = data.Preprocess.for_size(16)
    root = tmp_path / "train"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(root / label / f"{i}.jpg")
    (root / "b" / "3.jpg").write_bytes(b"not a jpeg")
    ds = data.ChannelDataset(str(root), {"a": 0, "b": 1}, pre.eval_transform(), 0, 0,
                             draft=pre.resize)
    batches = list(quantize.calibration_batches(ds, 7, 3))
    assert [b.shape for b in batches] == [torch.Size([3, 3, 16, 16]),
                                          torch.Size([3, 3, 16, 16])]  # 7 photos, 1 unreadable
    four = list(quantize.calibration_batches(ds, 4, 8))  # every other photo: both classes
    assert [b.shape[0] for b in four] == [4]
    assert list(quantize.calibration_batches(ds, 0, 8)) == []
