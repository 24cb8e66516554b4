"""Request bodies to model input: Pillow decodes, torchvision transforms.

Steps per image: refuse more than ``max_pixels`` before decoding (decompression bombs), let a
JPEG decode at 1/2, 1/4 or 1/8 scale when that still covers the resize (Pillow's ``draft``: a
12 MP phone photo then costs about what a 1 MP one does), apply the EXIF orientation, convert to
RGB (alpha composited on white), then the same resize, centre crop and normalisation as the
model's evaluation (from the artifact's manifest).
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2


class BadImage(ValueError):
    """The bytes are not an image we can use; the message says why (for a 400 answer)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(body: bytes, min_side: int, max_pixels: int) -> Image.Image:
    """Decode one image to RGB, at least ``min_side`` pixels on its shorter side where the
    original allows.

    Raises:
        BadImage: empty, not an image, truncated or corrupt, or more than ``max_pixels`` pixels.
    """
    if not body:
        raise BadImage("the request body is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(f"the image has {width}x{height} pixels; the limit is "
                               f"{max_pixels:,} pixels")
            if img.format == "JPEG":
                # Decodes at the smallest 1/1, 1/2, 1/4 or 1/8 scale that keeps both sides
                # >= min_side; other formats ignore draft.
                img.draft("RGB", (min_side, min_side))
            img = ImageOps.exif_transpose(img)
            img.load()
            return _to_rgb(img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"the image is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("the body is not an image Pillow can identify (JPEG, PNG, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"the image cannot be decoded (truncated or corrupt): {exc}") from None


class Preprocessor:
    """The manifest's evaluation transform: resize the shorter side to ``resize``, centre-crop
    ``crop``, scale to 0-1 and normalise with ``mean``/``std``. Output float32 [3, crop, crop]."""

    def __init__(self, resize: int, crop: int, mean, std, max_pixels: int):
        self.resize, self.crop, self.max_pixels = resize, crop, max_pixels
        self.transform = v2.Compose([
            v2.PILToTensor(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ])

    def __call__(self, body: bytes) -> torch.Tensor:
        """Raises BadImage (see ``decode``)."""
        return self.transform(decode(body, self.resize, self.max_pixels))
