"""The evaluation preprocessing that the training job and the server both run on a photo.

The model is evaluated by the training job and served on the same pixels: the first frame,
reduced to 8-bit grey or RGB (alpha composited on white; 16-bit, 32-bit and float images scaled
to 8 bits, not clipped), upright (EXIF orientation), then the evaluation geometry: the shorter
side resized to ``resize`` (bilinear, antialiased), the centre ``crop`` x ``crop`` cut out, and
scaled to 0-1 and normalised with ``IMAGENET_MEAN`` and ``IMAGENET_STD`` (the manifest's
``preprocess`` section records all of them). The geometry is torchvision's (``transforms.v2``
Resize and CenterCrop on a PIL image, which the training job's evaluation transform runs on
``to_rgb``'s output), so that ``model_input``, Pillow and numpy alone, gives the same pixels.

``reduce`` takes the fewest full-resolution copies (a grey image is resized as grey and made RGB
at 224x224, which is bit for bit what resizing its RGB copy gives; orientation and the
per-pixel conversions commute): serve counts what each step holds before it decodes
(serve/decode.py, ``decode_cost``), so a change of steps here changes that count there.
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ImageNet's per-channel mean and std on the 0-1 scale: torchvision's pretrained weights expect
# them (torchvision.models docs).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Rows of a high-bit-depth frame converted at a time: its float64 temporaries stay a few MB.
STRIP_PIXELS = 1 << 20


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


def reduced_mode(mode: str) -> str:
    """The 8-bit mode a frame of ``mode`` is reduced to before its geometry: L or RGB."""
    return "L" if mode in ("1", "L", "LA", "La") or mode in HIGH_DEPTH_MODES else "RGB"


def has_alpha(mode: str, info: dict) -> bool:
    """Whether a frame of ``mode`` (with Pillow's ``info``) has transparency."""
    return mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in info)


def _png_orientation(body: bytes) -> int | None:
    """The EXIF orientation of a PNG's eXIf chunk, wherever the chunk is (Pillow reads one after
    the pixel data only when it decodes them), found by walking the chunk headers; None when the
    PNG has no eXIf chunk."""
    pos, exif = 8, None
    while pos + 8 <= len(body):
        length, kind = struct.unpack(">I4s", body[pos:pos + 8])
        if kind == b"eXIf":
            exif = body[pos + 8:pos + 8 + length]
        if kind == b"IEND":
            break
        pos += 12 + length
    if exif is None:
        return None
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        return _valid_orientation(parsed.get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block means no orientation
        return 1


def _valid_orientation(value) -> int:
    return value if isinstance(value, int) and value in TRANSPOSE else 1


def orientation(img: Image.Image, body: bytes | None = None) -> int:
    """The EXIF orientation (1-8; 1 when there is none or it is unreadable), without decoding
    the pixels (for a PNG, from ``body``'s chunks when given)."""
    if img.format == "PNG":
        if body is not None:
            found = _png_orientation(body)
            return 1 if found is None else found
        if "exif" not in img.info:
            return 1
    try:
        return _valid_orientation(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001
        return 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images as 8-bit grey, scaled rather than clipped: 16-bit values
    by 255/65535; 32-bit integers by their bit depth in use (up to 8, 16 or 32 bits); floats as
    0-1 when they are (else by their maximum). Converted a strip of rows at a time, so the
    float64 arithmetic never holds more than a few MB beside the frame and the result."""
    width, height = img.size
    rows = max(1, STRIP_PIXELS // width)
    strips = [(top, min(top + rows, height)) for top in range(0, height, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(img.crop((0, top, width, bottom)))

    if img.mode == "F":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN strip has no maximum
            tops = [float(np.nanmax(strip(*s))) for s in strips]
        finite = [t for t in tops if not math.isnan(t)]
        top = max(finite) if finite else math.nan
        scale = 255.0 if top <= 1.0 else 255.0 / max(top, 1e-12)
    elif img.mode == "I":
        top = max(int(strip(*s).max()) for s in strips)
        bits = 8 if top < 2**8 else 16 if top < 2**16 else 32
        scale = 255.0 / (2**bits - 1)
    else:  # I;16 variants
        scale = 255.0 / 65535.0
    out = np.empty((height, width), np.uint8)
    for top_row, bottom in strips:
        scaled = np.clip(np.nan_to_num(strip(top_row, bottom).astype(np.float64) * scale), 0, 255)
        out[top_row:bottom] = np.rint(scaled)
    return Image.fromarray(out, mode="L")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """An image with transparency as RGB (L for LA) over an opaque white background."""
    if img.mode == "P":
        # Compositing is a function of the palette index: composite the palette's 256 colours
        # and look them up, instead of a full-resolution RGBA copy, canvas and composite.
        swatch = Image.new("P", (256, 1))
        swatch.putpalette(img.getpalette("RGB"))
        swatch.info["transparency"] = img.info.pop("transparency")
        swatch.putdata(range(256))
        white = Image.new("RGBA", swatch.size, (255, 255, 255, 255))
        colours = Image.alpha_composite(white, swatch.convert("RGBA")).convert("RGB")
        img.putpalette(colours.tobytes(), "RGB")
        return img.convert("RGB")
    if img.mode in ("LA", "La"):
        grey, alpha = img.getchannel("L"), img.getchannel("A")
        out = Image.new("L", img.size, 255)
        out.paste(grey, mask=alpha)
        return out
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    out = Image.new("RGB", img.size, (255, 255, 255))
    out.paste(img, mask=img)  # the RGBA image's alpha band is the mask
    return out


def reduce(img: Image.Image, turn: int) -> Image.Image:
    """A loaded frame as 8-bit grey (L) or RGB, upright for EXIF orientation ``turn`` (1-8), on
    the fewest full-resolution copies. The source frame is released (closed) once its reduced
    copy exists."""
    if img.mode in HIGH_DEPTH_MODES:
        reduced = _to_8bit(img)
    elif has_alpha(img.mode, img.info):
        reduced = _composite_on_white(img)
    elif img.mode in ("L", "RGB"):
        reduced = img
    else:
        reduced = img.convert(reduced_mode(img.mode))
    if reduced is not img:
        img.close()
    method = TRANSPOSE.get(turn)
    if method is not None:
        upright = reduced.transpose(method)
        reduced.close()
        reduced = upright
    return reduced


def to_rgb(img: Image.Image) -> Image.Image:
    """The first frame of an opened image as upright RGB: EXIF orientation applied, alpha
    composited on white, high bit depths scaled to 8 bits (the training job's decoding, before its
    transforms; ``model_input`` gives the same pixels at the model's size). ``img`` is closed.

    Raises:
        Exception: anything Pillow raises on a truncated or malformed file.
    """
    img.seek(0)
    img.load()
    reduced = reduce(img, orientation(img))
    return reduced if reduced.mode == "RGB" else reduced.convert("RGB")


def eval_geometry(img: Image.Image, geometry: Geometry) -> Image.Image:
    """torchvision's Resize(resize) then CenterCrop(crop) on a PIL image (bilinear; Pillow's
    resize antialiases)."""
    size = geometry.resized_size(*img.size)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    crop = geometry.crop
    width, height = img.size
    if crop > width or crop > height:  # torchvision pads with black; a resize below crop only
        canvas = Image.new(img.mode, (max(crop, width), max(crop, height)))
        canvas.paste(img, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        img, (width, height) = canvas, canvas.size
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def draft(img: Image.Image, size: int) -> None:
    """Set a JPEG to decode at the smallest 1/1, 1/2, 1/4 or 1/8 scale whose sides stay >=
    ``size`` px (libjpeg's DCT scaling: a 12 MP photo then costs about what a 1 MP one does);
    other formats are left as they are. Call it before the pixels are loaded."""
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (size, size))


def model_input(img: Image.Image, geometry: Geometry, turn: int) -> np.ndarray:
    """The model's input before scaling and normalisation: uint8 [crop, crop, 3], from an opened
    image's first frame, upright for EXIF orientation ``turn`` (``orientation(img, body)``).
    The source frame is released; the caller closes ``img``.

    Raises:
        Exception: anything Pillow raises on a truncated or malformed file.
    """
    img.seek(0)  # the first frame of an animation or a multi-page file
    img.load()
    cropped = eval_geometry(reduce(img, turn), geometry)
    return np.asarray(cropped if cropped.mode == "RGB" else cropped.convert("RGB"))
