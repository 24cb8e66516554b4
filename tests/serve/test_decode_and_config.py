"""Decoding and settings, without a server."""

import io

import pytest
from PIL import Image

from serve import config
from serve.decode import BadImage, Preprocessor, decode
from tests.conftest import DOG_PHOTOS


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_large_jpeg_decodes_at_reduced_scale_but_covers_the_resize():
    with Image.open(DOG_PHOTOS[0]) as img:
        big = _jpeg(img.convert("RGB").resize((4000, 3000)))
    out = decode(big, min_side=256, max_pixels=50_000_000)
    assert out.size == (500, 375)  # 1/8 scale: the shorter side still >= 256
    assert decode(big, min_side=400, max_pixels=50_000_000).size == (1000, 750)


def test_exif_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    body = _jpeg(Image.new("RGB", (80, 40), "red"), exif=exif)
    assert decode(body, 40, 10_000).size == (40, 80)


def test_alpha_is_composited_on_white():
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(buf, "PNG")
    assert decode(buf.getvalue(), 16, 10_000).getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("body, words", [
    (b"", "empty"),
    (DOG_PHOTOS[0].read_bytes()[:5000], "cannot be decoded"),
    (b"\x00" * 100, "identify"),
])
def test_bad_bodies(body, words):
    with pytest.raises(BadImage, match=words):
        decode(body, 16, 10_000_000)


def test_pixel_limit_is_checked_before_decoding():
    body = _jpeg(Image.new("RGB", (300, 300)))
    with pytest.raises(BadImage, match="limit is 50,000 pixels"):
        decode(body, 16, 50_000)


def test_preprocessor_output_shape_and_dtype():
    import torch

    pre = Preprocessor(37, 32, [0.5] * 3, [0.25] * 3, 50_000_000)
    x = pre(DOG_PHOTOS[0].read_bytes())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_settings_defaults_and_overrides():
    s = config.Settings.from_env({})
    assert s.port == 8080 and s.model_dir == "/opt/ml/model" and s.timeout_s == 60
    assert s.max_payload_bytes == 6 * 1024 * 1024 and s.batch_strategy == "SINGLE_RECORD"
    s = config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "3",
                                  "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20", "SM_MODEL_DIR": "/m"})
    assert s.workers == 3 and s.max_payload_bytes == 20 * 1024 * 1024 and s.model_dir == "/m"
    with pytest.raises(ValueError, match="SAGEMAKER_MODEL_SERVER_WORKERS"):
        config.Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"})


def test_default_workers():
    assert config.default_workers(gpus=4, cpus=48) == 4
    assert config.default_workers(gpus=0, cpus=2) == 1
    assert config.default_workers(gpus=0, cpus=16) == 4
