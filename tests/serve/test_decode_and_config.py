"""Decoding, settings and GPU assignment, without a server."""

import io

import pytest
from PIL import Image

from contract.preprocess import Geometry
from serve import config, settings_table
from serve.decode import decode, inspect
from serve.errors import BadImage
from tests.conftest import DOG_PHOTOS

G = Geometry(resize=256, crop=224)
BIG = 50_000_000


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_large_jpeg_decodes_at_reduced_scale_but_covers_the_resize():
    with Image.open(DOG_PHOTOS[0]) as img:
        big = _jpeg(img.convert("RGB").resize((4000, 3000)))
    assert inspect(big, G, BIG, BIG).image.size == (500, 375)  # 1/8: shorter side still >= 256
    assert inspect(big, Geometry(400, 384), BIG, BIG).image.size == (1000, 750)
    assert decode(big, G, BIG, BIG).shape == (224, 224, 3)


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    left_red = Image.new("RGB", (80, 40), "blue")
    left_red.paste((255, 0, 0), (0, 0, 40, 40))  # stored: red on the left half
    out = decode(_jpeg(left_red, exif=exif, quality=95), Geometry(40, 40), BIG, BIG)
    assert out.shape == (40, 40, 3)
    assert out[2, 20, 0] > 200 and out[-3, 20, 2] > 200  # displayed: red on top, blue below


def test_alpha_is_composited_on_white():
    out = decode(_png(Image.new("RGBA", (20, 20), (0, 0, 0, 0))), Geometry(16, 16), BIG, BIG)
    assert (out == 255).all()


@pytest.mark.parametrize("mode, value, expected", [
    ("I;16", 32768, 128),  # half of 16-bit full scale is mid-grey, not clipped to white
    ("I;16", 65535, 255),
    ("I", 1000, 4),  # a 32-bit image using 16 bits: by 16-bit full scale
    ("F", 0.5, 128),  # floats in 0-1
])
def test_high_bit_depth_images_are_scaled_not_clipped(mode, value, expected):
    img = Image.new(mode, (32, 32), value)
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("I", "F") else "PNG")
    out = decode(buf.getvalue(), Geometry(16, 16), BIG, BIG)
    assert abs(int(out[8, 8, 0]) - expected) <= 1 and (out[..., 0] == out[..., 1]).all()


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "BMP", "TIFF-multipage"])
def test_other_formats_and_first_frames(fmt):
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 30, 30), (30, 200, 30))]
    buf = io.BytesIO()
    if fmt == "TIFF-multipage":
        frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    elif fmt == "GIF":
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    else:
        frames[0].save(buf, fmt)
    out = decode(buf.getvalue(), Geometry(32, 32), BIG, BIG)
    assert out[16, 16, 0] > 150 and out[16, 16, 1] < 90  # the first frame, red


@pytest.mark.parametrize("body, words", [
    (b"", "empty"),
    (DOG_PHOTOS[0].read_bytes()[:5000], "cannot be decoded"),
    (b"\x00" * 100, "identify"),
])
def test_bad_bodies(body, words):
    with pytest.raises(BadImage, match=words):
        decode(body, G, BIG, BIG)


def test_pixel_limits_are_checked_before_decoding():
    body = _jpeg(Image.new("RGB", (300, 300)))
    with pytest.raises(BadImage, match="limit is 50,000 pixels"):
        inspect(body, G, 50_000, BIG)
    strip = _png(Image.new("L", (1, 50_000)))  # a few hundred bytes
    with pytest.raises(BadImage, match=r"resize to 256x12800000 .* limit is 2,000,000"):
        inspect(strip, G, BIG, 2_000_000)


def test_decode_memory_estimate_covers_the_frames_it_holds():
    png = inspect(_png(Image.new("RGBA", (1000, 800))), G, BIG, BIG)
    assert png.decode_bytes >= 1000 * 800 * (4 + 3)
    jpeg = inspect(_jpeg(Image.new("RGB", (4000, 3000))), G, BIG, BIG)
    assert jpeg.decode_bytes < 4000 * 3000  # decoded at 1/8 scale


def test_serve_input_equals_the_training_jobs_evaluation_transform(tmp_path):
    """train's evaluation data (the valid channel's dataset) and serve's Pillow-only
    preprocessing, then the model thread's scaling, give the same tensor for the same photos."""
    import shutil

    import torch

    from serve.model import normalise
    from train.data import Preprocess, build_datasets

    for split in ("train", "valid"):
        (tmp_path / split / "001.dog").mkdir(parents=True)
        for photo in DOG_PHOTOS:
            shutil.copy(photo, tmp_path / split / "001.dog" / photo.name)
    channels = {split: str(tmp_path / split) for split in ("train", "valid")}
    for size in (224, 32):  # 32: every sample photo decodes at a reduced JPEG scale
        pre = Preprocess.for_size(size)
        valid = build_datasets(channels, ["001.dog"], pre, 0.25, 0, 0)["valid"]
        geometry = Geometry(pre.resize, pre.crop)
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        std = torch.tensor(pre.std).view(1, 3, 1, 1)
        for i, (path, _) in enumerate(valid.samples):
            expected, _ = valid[i]
            raw = decode(open(path, "rb").read(), geometry, BIG, BIG)
            got = normalise(torch.from_numpy(raw[None].copy()), mean, std)[0]
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_settings_defaults_and_overrides():
    s = config.Settings.from_env({}, gpus=0)
    assert s.port == 8080 and s.model_dir == "/opt/ml/model" and s.timeout_s == 60
    assert s.max_payload_bytes == 6 * 1024 * 1024 and s.batch_strategy == "SINGLE_RECORD"
    assert s.max_batch_size == settings_table.DEFAULT_MAX_BATCH["cpu"]
    assert s.threads == s.max_queue + config.SPARE_THREADS
    gpu = config.Settings.from_env({}, gpus=2)
    assert gpu.max_batch_size == settings_table.DEFAULT_MAX_BATCH["gpu"]
    # SageMaker's usual 64 concurrent invocations fit one GPU worker's queue, with room.
    assert s.max_queue == 32 and gpu.max_queue == 128 >= 2 * 64
    s = config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "3",
                                  "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SM_MODEL_DIR": "/m",
                                  "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "4",
                                  "SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS": "0"}, gpus=0)
    assert s.workers == 3 and s.max_payload_bytes == 20 * 1024 * 1024 and s.model_dir == "/m"
    assert s.max_batch_size == 4 and s.max_batch_delay_ms == 0
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert config.Settings.from_env({"SERVE_PRECISION": precision}, gpus=0).precision == \
            precision
    with pytest.raises(ValueError, match="SERVE_PRECISION"):
        config.Settings.from_env({"SERVE_PRECISION": "int4"}, gpus=0)
    with pytest.raises(ValueError, match="SAGEMAKER_MODEL_SERVER_WORKERS"):
        config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, gpus=0)
    with pytest.raises(ValueError, match="SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE.*at least 1"):
        config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "0"}, gpus=0)


def test_a_max_batch_size_over_the_programs_is_refused_at_start(monkeypatch, capsys):
    """The exported programs take batches up to contract.artifact.MAX_BATCH: a larger setting
    stops `serve` with one line and exit 2, before gunicorn starts a worker that could never
    load the model."""
    from contract.artifact import MAX_BATCH
    from serve import cli

    top = {"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": str(MAX_BATCH)}
    assert config.Settings.from_env(top, gpus=0).max_batch_size == MAX_BATCH
    with pytest.raises(ValueError, match=f"='2000' must be at most {MAX_BATCH} "):
        config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": "2000"}, gpus=0)
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE", "2000")
    monkeypatch.setattr(cli.os, "execv", lambda *args: pytest.fail("gunicorn started"))
    assert cli.main() == 2
    err = capsys.readouterr().err
    assert err == (f"serve: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE='2000' must be at most "
                   f"{MAX_BATCH} (the largest batch a model program takes, "
                   f"contract/artifact.py)\n")


def test_default_workers():
    assert settings_table.default_workers(gpus=4, cpus=48) == 4
    assert settings_table.default_workers(gpus=0, cpus=2) == 1
    assert settings_table.default_workers(gpus=0, cpus=16) == 4


def test_a_respawned_worker_takes_the_gpu_of_the_worker_it_replaces(monkeypatch):
    """gunicorn's master calls pre_fork for each new worker, with the live ones in
    server.WORKERS; GPUs as a host with 4 would have them."""
    from types import SimpleNamespace

    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "4")
    from serve import gunicorn_conf

    monkeypatch.setattr(gunicorn_conf, "_settings", SimpleNamespace(gpus=4))
    server = SimpleNamespace(WORKERS={})
    for pid in range(100, 104):
        worker = SimpleNamespace()
        gunicorn_conf.pre_fork(server, worker)
        server.WORKERS[pid] = worker
    assert sorted(w.gpu_index for w in server.WORKERS.values()) == [0, 1, 2, 3]
    dead = server.WORKERS.pop(102)  # its GPU is 2
    replacement = SimpleNamespace()
    gunicorn_conf.pre_fork(server, replacement)
    assert replacement.gpu_index == dead.gpu_index == 2
    # With two workers per GPU, the least used GPU is taken.
    assert gunicorn_conf.assign_gpu([0, 0, 1, 1, 2], 3) == 2
    assert gunicorn_conf.assign_gpu([0, 1, 2, 0, 1, 2, 1], 3) == 0
