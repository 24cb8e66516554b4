"""`make demo` on its real path, from a loopback server: the dogImages download with its progress
bar, the checks, the subset, training from a pretrained state_dict planted where torchvision's
loader looks, serving, and a breed printed for each sample photo."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import ARTIFACTS, DOG_PHOTOS, ROOT
from tests.tools.archive import ArchiveServer, make_archive

DEMO = ROOT / "tools" / "demo.py"


def plant_resnet50_weights(torch_home) -> None:
    """A random resnet50 state_dict (the right keys and shapes) under the file name
    torchvision's loader looks for in its cache."""
    import torchvision

    url = torchvision.models.get_model_weights("resnet50").DEFAULT.url
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(),
               checkpoints / url.rsplit("/", 1)[1])


@pytest.mark.model
def test_the_demo_downloads_trains_serves_and_names_a_breed_per_photo(tmp_path):
    server = ArchiveServer(make_archive(tmp_path / "dogImages.zip").read_bytes())
    plant_resnet50_weights(tmp_path / "torch")
    # One epoch, and the server compiles batch size 1 only: the path is the demo's, without
    # the epochs and batch sizes no assertion here reads.
    env = dict(os.environ, DOG_IMAGES_URL=server.url, TORCH_HOME=str(tmp_path / "torch"),
               DEMO_IMAGES_PER_CLASS="1", DEMO_EPOCHS="1", DEMO_DATA_DIR=str(tmp_path / "data"),
               DEMO_OUT_DIR=str(tmp_path / "out"), SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE="1",
               PYTHONUNBUFFERED="1")
    try:
        run = subprocess.run([sys.executable, str(DEMO)], env=env, cwd=ROOT, timeout=1800,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        server.close()
    out = run.stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "demo-loopback.log").write_text(out)
    assert run.returncode == 0, out[-4000:]
    assert "FALLBACK" not in out
    assert re.search(r"dogImages\.zip: 100%\|", out)  # tqdm's bar
    assert "dogImages ready in" in out
    assert "using dogImages, 1 per breed and split" in out
    assert "=== train (resnet50, 1 epochs) through container/train" in out
    assert "train: 133 images in 133 classes, valid: 133 images in 133 classes" in out
    assert "loaded 318 of 320 tensors" in out  # the planted ImageNet state_dict, but the head
    for photo in DOG_PHOTOS:
        line = next(line for line in out.splitlines() if line.startswith(photo.name))
        assert re.search(r"Breed \d{3} \(\d\.\d\d\)", line), line
    assert re.search(r"^stages: data \d+ s, train \d+ s, serve \d+ s", out, re.M)


def _demo_module(monkeypatch, tmp_path):
    monkeypatch.setenv("DEMO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DEMO_OUT_DIR", str(tmp_path / "out"))
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_pretrained_weights_from_a_file_become_the_pretrained_channel(tmp_path, monkeypatch):
    weights = tmp_path / "mirror" / "resnet50.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"a state_dict")
    monkeypatch.setenv("PRETRAINED_WEIGHTS", str(weights))
    demo = _demo_module(monkeypatch, tmp_path)
    channel = demo.pretrained_weights()
    assert [p.name for p in channel.iterdir()] == ["resnet50.pth"]
    assert (channel / "resnet50.pth").resolve() == weights.resolve()


def test_unreachable_data_falls_back_to_digits_and_a_bad_archive_stops(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("DOG_IMAGES_URL", "http://127.0.0.1:9/dogImages.zip")  # nothing listens
    demo = _demo_module(monkeypatch, tmp_path)
    data, hyperparameters, what, weights = demo.choose_data()
    assert what == "digits fallback" and hyperparameters["arch"] == "resnet18"
    assert "FALLBACK: cannot reach http://127.0.0.1:9/dogImages.zip" in capsys.readouterr().out
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    monkeypatch.setenv("DOG_IMAGES_URL", str(bad))
    with pytest.raises(SystemExit, match=r"^demo: .* is not a zip archive .*check the archive "
                                         r"DOG_IMAGES_URL names$"):
        demo.choose_data()


def test_a_demo_copy_that_would_hold_dogimages_stops_and_keeps_it(tmp_path, monkeypatch):
    """DEMO_DATA_DIR inside DEMO_OUT_DIR/data/dogs: the per-breed copy would have replaced the
    folder holding dogImages; the demo stops with one line and dogImages is intact."""
    monkeypatch.setenv("DEMO_OUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("DEMO_DATA_DIR", str(tmp_path / "out" / "data" / "dogs"))
    spec = importlib.util.spec_from_file_location("demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    photo = demo.DATA / "dogImages" / "train" / "001.Affenpinscher" / "a.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(DOG_PHOTOS[0].read_bytes())
    monkeypatch.setattr(demo.dogimages, "ensure", lambda data: data / "dogImages")
    monkeypatch.setattr(demo, "pretrained_weights", lambda: None)
    with pytest.raises(SystemExit, match=r"^demo: .*/out/data/dogs holds the source "
                                         r".*/dogImages: writing it would delete the source"):
        demo.choose_data()
    assert photo.read_bytes() == DOG_PHOTOS[0].read_bytes()
