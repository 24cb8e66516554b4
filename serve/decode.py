"""Request bodies to model input with Pillow alone: no torch in the request threads.

Per image, in the request's own thread (Pillow releases the GIL while it decodes, so requests
decode in parallel, while the model thread runs batches):

1. ``inspect``: read the header only. Refuse, before decoding, formats other than
   ``ACCEPTED_FORMATS``, more than ``max_pixels`` pixels (decompression bombs) and an image whose
   resize to the model's input would be larger than ``max_resized_pixels`` (a 1x50,000 strip
   resized to 256 on its short side is 256x12,800,000); a JPEG is set to decode at 1/2, 1/4 or
   1/8 scale when that still covers the resize (``draft``: a 12 MP phone photo then costs about
   what a 1 MP one does). Returns the bytes its decode will hold at most (``decode_cost``), for
   the worker's decode memory budget, and the megapixels it decodes, for its time estimate.
2. ``to_model_input``: decode the first frame, reduce it to 8-bit grey or RGB (alpha composited
   on white; 16-bit, 32-bit and float images scaled to 8 bits, not clipped), apply the EXIF
   orientation, then the model's evaluation geometry: the shorter side resized to ``resize``
   (bilinear, antialiased), the centre ``crop`` x ``crop`` cut out. The result is uint8
   [crop, crop, 3].

The order is chosen for memory, not convenience: every step that copies the full-resolution
frame runs on the smallest representation that gives the same pixels (a grey image is resized
as grey and made RGB at 224x224, which is bit for bit what resizing its RGB copy gives;
orientation and the per-pixel conversions commute). The geometry is torchvision's
(``transforms.v2`` Resize and CenterCrop on a PIL image, which the training job's evaluation
transform runs on ``to_rgb``'s output), so serve's input equals train's for the same photo;
the model thread scales and normalises the batch.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

# What a photo arrives as; everything else Pillow could open (PSD, ICO, EPS...) is refused at
# the header, so its decoder's memory and bugs are not ours to bound. Pillow's JPEG opener also
# opens the multi-picture JPEGs that phones write (format "MPO").
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
# PNG text chunks are metadata the model never reads; Pillow's own caps (1 MB a chunk, 64 MB in
# all) let eight requests hold half a gigabyte of text. 1 MB in all is generous for a photo.
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that displays the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Rows of a high-bit-depth frame converted at a time: its float64 temporaries stay a few MB.
_STRIP_PIXELS = 1 << 20
_STRIP_BYTES = _STRIP_PIXELS * 8 * 3  # the strip's copy, its array and float64 result, at most
# A WebP decode peaks at about 16 bytes a pixel, the frame included (measured: 7000x7000
# lossless RGBA and lossy RGB WebPs), and Pillow keeps the decoder's copy until the close.
_WEBP_DECODE_BYTES_PER_PIXEL = 16
# Decoder state, the Python objects around it and allocator rounding: what a 64x64 image costs.
_DECODE_OVERHEAD_BYTES = 8 * 2**20
_ESTIMATE_MARGIN = 1.1


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
    """An image opened but not decoded: ``image`` (lazy), its ``size`` as sent, the bytes its
    decode holds at most (``decode_bytes``), the megapixels it decodes (after a JPEG's draft
    scale) and its EXIF ``orientation`` (1-8)."""

    image: Image.Image
    size: tuple[int, int]
    decode_bytes: int
    megapixels: float = 0.0
    orientation: int = 1


def pixel_bytes(mode: str) -> int:
    """Bytes a pixel of ``mode`` takes in Pillow's memory: 1 for 1, L and P, 2 for the I;16
    modes, 4 for every other mode (Pillow pads 2- and 3-band pixels to 32 bits)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _reduced_mode(mode: str) -> str:
    """The 8-bit mode a frame of ``mode`` is reduced to before its geometry: L or RGB."""
    return "L" if mode in ("1", "L", "LA", "La") or mode in _HIGH_DEPTH_MODES else "RGB"


def _has_alpha(mode: str, info: dict) -> bool:
    return mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in info)


def decode_cost(mode: str, size: tuple[int, int], resized: tuple[int, int], orientation: int,
                alpha: bool, decoder_bytes: int = 0) -> int:
    """Bytes that ``to_model_input`` holds at its peak for a frame of ``size`` (after any JPEG
    draft) in Pillow ``mode``, resized to ``resized``, with EXIF ``orientation`` and (for P and
    LA-like modes) an ``alpha`` channel; ``decoder_bytes``: what the decoder holds beside the
    frame while it runs (``_decoder_bytes``). It follows the steps of ``_reduce`` and
    ``to_model_input`` one by one and takes the largest sum of what is alive at once; measured
    peaks stay within it (tests/serve/test_decode_memory.py)."""
    px = size[0] * size[1]
    frame = pixel_bytes(mode) * px
    loading = frame + decoder_bytes
    held = frame + min(decoder_bytes, frame)  # a WebP decoder's copy stays until the close
    target = _reduced_mode(mode)
    out = pixel_bytes(target) * px
    if mode in ("L", "RGB"):
        reducing = held  # no copy: the frame is the reduced image
    elif mode in _HIGH_DEPTH_MODES:
        reducing = held + out + _STRIP_BYTES
    elif mode in ("LA", "La"):
        reducing = held + 3 * px  # the grey and alpha bands and the composite
    elif alpha and mode != "RGBA" and mode != "P":
        reducing = held + 4 * px + out  # converted to RGBA first
    else:  # RGBA composited into RGB; P through its palette; other modes converted
        reducing = held + out
    orienting = 2 * out if orientation in _TRANSPOSE else out
    rw, rh = resized
    height = size[0] if orientation in (5, 6, 7, 8) else size[1]
    # Pillow resizes in two passes: to (rw, height) first, then to (rw, rh).
    resizing = out + pixel_bytes(target) * (rw * height + rw * rh)
    peak = max(loading, reducing, orienting, resizing)
    return int(peak * _ESTIMATE_MARGIN) + _DECODE_OVERHEAD_BYTES


def _jpeg_scans(body: bytes) -> int:
    """How many scans (SOS markers) a JPEG's image has: 1 for a baseline sequential JPEG, more
    for a progressive or multi-scan one. Walks the marker segments (so an EXIF thumbnail's own
    scan is not counted), then looks for a second SOS after the first scan's data (entropy-coded
    data cannot hold one: a 0xFF there is always followed by 0x00 or a restart marker)."""
    pos = 2
    while pos + 4 <= len(body):
        if body[pos] != 0xFF:
            return 1
        marker = body[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            scans, at = 1, pos + 2
            while (at := body.find(b"\xff\xda", at)) >= 0:
                scans, at = scans + 1, at + 2
            return scans
        pos += 2 + int.from_bytes(body[pos + 2:pos + 4], "big")
    return 1


def _decoder_bytes(img: Image.Image, body: bytes) -> int:
    """What ``img``'s decoder holds beside the frame while it decodes, in bytes: a progressive
    or multi-scan JPEG keeps every DCT coefficient (2 bytes per sample, at full resolution
    whatever its draft scale; libjpeg's "buffered image" mode); a WebP decoder makes about three
    copies of the frame (16 bytes a pixel in all, measured); others, nothing that grows with
    the image."""
    width, height = img.size
    if img.format == "WEBP":
        return (_WEBP_DECODE_BYTES_PER_PIXEL - pixel_bytes(img.mode)) * width * height
    if img.format in ("JPEG", "MPO") and _jpeg_scans(body) > 1:
        layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * 3
        h_max = max(h for _, h, _, _ in layers)
        v_max = max(v for _, _, v, _ in layers)
        blocks_w = -(-width // (8 * h_max)) * 8 * h_max
        blocks_h = -(-height // (8 * v_max)) * 8 * v_max
        samples = sum(h * v for _, h, v, _ in layers) / (h_max * v_max)
        return int(2 * blocks_w * blocks_h * samples)
    return 0


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
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _orientation(img: Image.Image, body: bytes | None = None) -> int:
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


def inspect(body: bytes, geometry: Geometry, max_pixels: int, max_resized_pixels: int
            ) -> Inspected:
    """Open ``body`` and check its cost from the header alone.

    Raises:
        BadImage: empty, not an image, another format than ``ACCEPTED_FORMATS``, more than
            ``max_pixels`` pixels, or a resize larger than ``max_resized_pixels`` (the message
            gives the limit).
    """
    if not body:
        raise BadImage("the request body is empty", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body), formats=ACCEPTED_FORMATS)
            width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"the image is too large to decode safely: {exc}", "too_large") from None
    except UnidentifiedImageError:
        raise BadImage(f"the body is not an image Pillow can identify as one of "
                       f"{', '.join(ACCEPTED_FORMATS)}", "not_an_image") from None
    except Exception as exc:  # noqa: BLE001 - any header Pillow chokes on is the client's
        raise BadImage(f"the image header cannot be read: {type(exc).__name__}: {exc}") from None
    if width < 1 or height < 1:
        raise BadImage(f"the image has {width}x{height} pixels")
    if width * height > max_pixels:
        raise BadImage(f"the image has {width}x{height} pixels; the limit is {max_pixels:,} "
                       f"pixels", "too_many_pixels")
    orientation = _orientation(img, body)
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    rw, rh = geometry.resized_size(*upright)
    if rw * rh > max_resized_pixels:
        raise BadImage(f"the image's {width}x{height} pixels resize to {rw}x{rh} for the model; "
                       f"the limit is {max_resized_pixels:,} pixels (an aspect ratio of at most "
                       f"about {max_resized_pixels // geometry.resize ** 2}:1)", "resize_too_large")
    decoder = _decoder_bytes(img, body)
    if img.format in ("JPEG", "MPO"):
        # Decodes at the smallest 1/1, 1/2, 1/4 or 1/8 scale that keeps both sides >= resize.
        img.draft("RGB", (geometry.resize, geometry.resize))
    dw, dh = img.size
    cost = decode_cost(img.mode, (dw, dh), (rw, rh), orientation,
                       _has_alpha(img.mode, img.info), decoder)
    return Inspected(img, (width, height), cost, dw * dh / 1e6, orientation)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images as 8-bit grey, scaled rather than clipped: 16-bit values
    by 255/65535; 32-bit integers by their bit depth in use (up to 8, 16 or 32 bits); floats as
    0-1 when they are (else by their maximum). Converted a strip of rows at a time, so the
    float64 arithmetic never holds more than a few MB beside the frame and the result."""
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // width)
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


def _reduce(img: Image.Image, orientation: int) -> Image.Image:
    """A loaded frame as 8-bit grey (L) or RGB, upright, on the fewest full-resolution copies.
    The source frame is released (closed) once its reduced copy exists."""
    if img.mode in _HIGH_DEPTH_MODES:
        reduced = _to_8bit(img)
    elif _has_alpha(img.mode, img.info):
        reduced = _composite_on_white(img)
    elif img.mode in ("L", "RGB"):
        reduced = img
    else:
        reduced = img.convert(_reduced_mode(img.mode))
    if reduced is not img:
        img.close()
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        upright = reduced.transpose(method)
        reduced.close()
        reduced = upright
    return reduced


def to_rgb(img: Image.Image) -> Image.Image:
    """The first frame of an opened image as upright RGB: EXIF orientation applied, alpha
    composited on white, high bit depths scaled to 8 bits (the training job's decoding; serve's
    ``to_model_input`` gives the same pixels at the model's size). ``img`` is closed.

    Raises:
        Exception: anything Pillow raises on a truncated or malformed file.
    """
    img.seek(0)
    img.load()
    reduced = _reduce(img, _orientation(img))
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


def to_model_input(inspected: Inspected, geometry: Geometry) -> np.ndarray:
    """Decode an inspected image into the model's input before scaling: uint8 [crop, crop, 3].
    Holds at most ``inspected.decode_bytes`` while it runs, and releases the frame.

    Raises:
        BadImage: truncated or corrupt (any error Pillow raises while decoding).
    """
    img = inspected.image
    try:
        img.seek(0)  # the first frame of an animation or a multi-page file
        img.load()
        cropped = eval_geometry(_reduce(img, inspected.orientation), geometry)
        return np.asarray(cropped if cropped.mode == "RGB" else cropped.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a bad file
        raise BadImage(f"the image cannot be decoded (truncated or corrupt): "
                       f"{type(exc).__name__}: {exc}") from None
    finally:
        img.close()


def decode(body: bytes, geometry: Geometry, max_pixels: int, max_resized_pixels: int
           ) -> np.ndarray:
    """``inspect`` then ``to_model_input``: uint8 [crop, crop, 3].

    Raises:
        BadImage: see ``inspect`` and ``to_model_input``.
    """
    return to_model_input(inspect(body, geometry, max_pixels, max_resized_pixels), geometry)
