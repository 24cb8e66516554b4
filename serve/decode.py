"""Request bodies to model input with Pillow alone: no torch in the request threads.

Per image, in the request's own thread (Pillow releases the GIL while it decodes, so requests
decode in parallel, while the model thread runs batches):

1. ``inspect``: read the header only. Refuse, before decoding, more than ``max_pixels`` pixels
   (decompression bombs) and an image whose resize to the model's input would be larger than
   ``max_resized_pixels`` (a 1x50,000 strip resized to 256 on its short side is 256x12,800,000);
   a JPEG is set to decode at 1/2, 1/4 or 1/8 scale when that still covers the resize
   (``draft``: a 12 MP phone photo then costs about what a 1 MP one does). Returns the bytes its
   decode will hold at most, for the worker's decode memory budget.
2. ``to_model_input``: decode the first frame, apply the EXIF orientation, convert to RGB
   (alpha composited on white; 16-bit, 32-bit and float images scaled to 8 bits, not clipped),
   then the model's evaluation geometry: the shorter side resized to ``resize`` (bilinear,
   antialiased), the centre ``crop`` x ``crop`` cut out. The result is uint8 [crop, crop, 3].

The geometry is torchvision's (``transforms.v2`` Resize and CenterCrop on a PIL image, which the
training job's evaluation transform uses), so serve's input equals train's for the same photo;
the model thread scales and normalises the batch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bytes per pixel of Pillow's modes, for the decode estimate (unknown modes count as 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2,
               "I;16L": 2, "I;16N": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4,
               "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadImage(ValueError):
    """The bytes are not an image we can use; the message says why (for a 400 answer) and
    ``kind`` names the failure for the metrics: empty, not_an_image, corrupt, too_large,
    too_many_pixels or resize_too_large."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Geometry:
    """The model's evaluation geometry: shorter side to ``resize`` px, centre ``crop`` px."""

    resize: int
    crop: int

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter side is resized to ``resize``; torchvision's rule
        (the longer side is truncated, not rounded)."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize


@dataclass
class Inspected:
    """An image opened but not decoded: ``image`` (lazy), its ``size`` and the bytes its decode
    needs at most (``decode_bytes``)."""

    image: Image.Image
    size: tuple[int, int]
    decode_bytes: int


def inspect(body: bytes, geometry: Geometry, max_pixels: int, max_resized_pixels: int
            ) -> Inspected:
    """Open ``body`` and check its cost from the header alone.

    Raises:
        BadImage: empty, not an image, more than ``max_pixels`` pixels, or a resize larger than
            ``max_resized_pixels`` (the message gives the limit).
    """
    if not body:
        raise BadImage("the request body is empty", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))
            width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"the image is too large to decode safely: {exc}", "too_large") from None
    except UnidentifiedImageError:
        raise BadImage("the body is not an image Pillow can identify (JPEG, PNG, ...)",
                       "not_an_image") from None
    except Exception as exc:  # noqa: BLE001 - any header Pillow chokes on is the client's
        raise BadImage(f"the image header cannot be read: {type(exc).__name__}: {exc}") from None
    if width < 1 or height < 1:
        raise BadImage(f"the image has {width}x{height} pixels")
    if width * height > max_pixels:
        raise BadImage(f"the image has {width}x{height} pixels; the limit is {max_pixels:,} "
                       f"pixels", "too_many_pixels")
    rw, rh = geometry.resized_size(width, height)
    if rw * rh > max_resized_pixels:
        raise BadImage(f"the image's {width}x{height} pixels resize to {rw}x{rh} for the model; "
                       f"the limit is {max_resized_pixels:,} pixels (an aspect ratio of at most "
                       f"about {max_resized_pixels // geometry.resize ** 2}:1)", "resize_too_large")
    if img.format == "JPEG":
        # Decodes at the smallest 1/1, 1/2, 1/4 or 1/8 scale that keeps both sides >= resize.
        img.draft("RGB", (geometry.resize, geometry.resize))
    dw, dh = img.size
    # The decoded frame, its RGB conversion and the resized copy, at most.
    decode_bytes = dw * dh * (_MODE_BYTES.get(img.mode, 4) + 3) + rw * rh * 3
    return Inspected(img, (width, height), decode_bytes)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images as 8-bit grey, scaled rather than clipped: 16-bit values
    by 255/65535; 32-bit integers by their bit depth in use (up to 8, 16 or 32 bits); floats as
    0-1 when they are (else by their maximum)."""
    a = np.asarray(img)
    if img.mode == "F":
        top = float(np.nanmax(a)) if a.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / max(top, 1e-12)
    elif img.mode == "I":
        top = int(a.max()) if a.size else 0
        bits = 8 if top < 2**8 else 16 if top < 2**16 else 32
        scale = 255.0 / (2**bits - 1)
    else:  # I;16 variants
        scale = 255.0 / 65535.0
    out = np.clip(np.nan_to_num(a.astype(np.float64) * scale), 0, 255)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any Pillow mode: alpha composited on white, high bit depths scaled to 8 bits."""
    if img.mode in _HIGH_DEPTH_MODES:
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def eval_geometry(img: Image.Image, geometry: Geometry) -> Image.Image:
    """torchvision's Resize(resize) then CenterCrop(crop) on a PIL image (bilinear; Pillow's
    resize antialiases)."""
    size = geometry.resized_size(*img.size)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    crop = geometry.crop
    width, height = img.size
    if crop > width or crop > height:  # torchvision pads with black; a resize below crop only
        canvas = Image.new("RGB", (max(crop, width), max(crop, height)))
        canvas.paste(img, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        img, (width, height) = canvas, canvas.size
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def to_model_input(inspected: Inspected, geometry: Geometry) -> np.ndarray:
    """Decode an inspected image into the model's input before scaling: uint8 [crop, crop, 3].

    Raises:
        BadImage: truncated or corrupt (any error Pillow raises while decoding).
    """
    try:
        img = inspected.image
        img.seek(0)  # the first frame of an animation or a multi-page file
        img = ImageOps.exif_transpose(img)
        img.load()
        return np.asarray(eval_geometry(to_rgb(img), geometry))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        raise BadImage(f"the image cannot be decoded (truncated or corrupt): "
                       f"{type(exc).__name__}: {exc}") from None


def decode(body: bytes, geometry: Geometry, max_pixels: int, max_resized_pixels: int
           ) -> np.ndarray:
    """``inspect`` then ``to_model_input``: uint8 [crop, crop, 3].

    Raises:
        BadImage: see ``inspect`` and ``to_model_input``.
    """
    return to_model_input(inspect(body, geometry, max_pixels, max_resized_pixels), geometry)
