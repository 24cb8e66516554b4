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
2. ``to_model_input``: decode the first frame into the model's input, uint8 [crop, crop, 3],
   with the evaluation preprocessing the training job runs too (contract/preprocess.py: 8-bit
   grey or RGB, EXIF orientation, resize and centre crop), so serve's input equals train's for
   the same photo; the model thread scales and normalises the batch.

What a decode holds is this module's job: ``decode_cost`` follows contract.preprocess's steps,
each of which runs on the smallest representation that gives the same pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from contract import preprocess
from contract.preprocess import (HIGH_DEPTH_MODES, STRIP_PIXELS, TRANSPOSE, Geometry, draft,
                                 has_alpha, model_input, reduced_mode)
from serve.errors import BadImage

# What a photo arrives as; everything else Pillow could open (PSD, ICO, EPS...) is refused at
# the header, so its decoder's memory and bugs are not ours to bound. Pillow's JPEG opener also
# opens the multi-picture JPEGs that phones write (format "MPO").
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
# PNG text chunks are metadata the model never reads; Pillow's own caps (1 MB a chunk, 64 MB in
# all) let eight requests hold half a gigabyte of text. 1 MB in all is generous for a photo.
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024

# A high-bit-depth frame's conversion holds one strip's copy, its array and float64 result.
_STRIP_BYTES = STRIP_PIXELS * 8 * 3
# A WebP decode peaks at about 16 bytes a pixel, the frame included (measured: 7000x7000
# lossless RGBA and lossy RGB WebPs), and Pillow keeps the decoder's copy until the close.
_WEBP_DECODE_BYTES_PER_PIXEL = 16
# Decoder state, the Python objects around it and allocator rounding: what a 64x64 image costs.
_DECODE_OVERHEAD_BYTES = 8 * 2**20
_ESTIMATE_MARGIN = 1.1


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


def decode_cost(mode: str, size: tuple[int, int], resized: tuple[int, int], orientation: int,
                alpha: bool, decoder_bytes: int = 0) -> int:
    """Bytes that ``to_model_input`` holds at its peak for a frame of ``size`` (after any JPEG
    draft) in Pillow ``mode``, resized to ``resized``, with EXIF ``orientation`` and (for P and
    LA-like modes) an ``alpha`` channel; ``decoder_bytes``: what the decoder holds beside the
    frame while it runs (``_decoder_bytes``). It follows the steps of ``to_model_input``
    (contract.preprocess's ``reduce`` and ``eval_geometry``) one by one and takes the largest
    sum of what is alive at once; measured peaks stay within it
    (tests/serve/test_decode_memory.py)."""
    px = size[0] * size[1]
    frame = pixel_bytes(mode) * px
    loading = frame + decoder_bytes
    held = frame + min(decoder_bytes, frame)  # a WebP decoder's copy stays until the close
    target = reduced_mode(mode)
    out = pixel_bytes(target) * px
    if mode in ("L", "RGB"):
        reducing = held  # no copy: the frame is the reduced image
    elif mode in HIGH_DEPTH_MODES:
        reducing = held + out + _STRIP_BYTES
    elif mode in ("LA", "La"):
        reducing = held + 3 * px  # the grey and alpha bands and the composite
    elif alpha and mode != "RGBA" and mode != "P":
        reducing = held + 4 * px + out  # converted to RGBA first
    else:  # RGBA composited into RGB; P through its palette; other modes converted
        reducing = held + out
    orienting = 2 * out if orientation in TRANSPOSE else out
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
    orientation = preprocess.orientation(img, body)
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    rw, rh = geometry.resized_size(*upright)
    if rw * rh > max_resized_pixels:
        raise BadImage(f"the image's {width}x{height} pixels resize to {rw}x{rh} for the model; "
                       f"the limit is {max_resized_pixels:,} pixels (an aspect ratio of at most "
                       f"about {max_resized_pixels // geometry.resize ** 2}:1)", "resize_too_large")
    decoder = _decoder_bytes(img, body)
    draft(img, geometry.resize)
    dw, dh = img.size
    cost = decode_cost(img.mode, (dw, dh), (rw, rh), orientation,
                       has_alpha(img.mode, img.info), decoder)
    return Inspected(img, (width, height), cost, dw * dh / 1e6, orientation)


def to_model_input(inspected: Inspected, geometry: Geometry) -> np.ndarray:
    """Decode an inspected image into the model's input before scaling: uint8 [crop, crop, 3].
    Holds at most ``inspected.decode_bytes`` while it runs, and releases the frame.

    Raises:
        BadImage: truncated or corrupt (any error Pillow raises while decoding).
    """
    img = inspected.image
    try:
        return model_input(img, geometry, inspected.orientation)
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
