"""The worst case of each decode path: the largest image that passes the server's limits (49 MP,
under the 50 MP pixel limit, in a body under the 6 MB payload cap), one per mode, format and
path (alpha, palette transparency, 16-bit, 32-bit, float, EXIF rotation, progressive JPEG, text
chunks). All-zero pixels compress to small bodies, which is what makes them the worst: the
body says little, the decode holds a lot.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

SIDE = 7000  # 49 MP


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rotated(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def text_chunks_png(megabytes: int = 60) -> bytes:
    """A small PNG carrying ``megabytes`` of zTXt text (each chunk 1 MB unpacked: Pillow's own
    per-chunk cap), a few KB on the wire."""
    base = _save(Image.new("RGB", (64, 64)), "PNG")
    packed = zlib.compress(b"a" * (1024 * 1024 - 1024), 9)
    chunks = b"".join(_png_chunk(b"zTXt", b"k%d\0\0" % i + packed) for i in range(megabytes))
    return base[:33] + chunks + base[33:]  # after the signature and IHDR


NAMES = ("RGB PNG", "RGB PNG rotated", "RGBA PNG", "RGBA PNG rotated", "LA PNG",
         "palette PNG with transparency", "16-bit grey PNG", "16-bit grey PNG rotated",
         "32-bit integer TIFF", "float TIFF", "CMYK TIFF", "GIF with transparency",
         "progressive JPEG 4:4:4", "progressive CMYK JPEG", "lossless WebP", "60 MB of PNG text")


@functools.cache
def worst_cases(side: int = SIDE) -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type), each a valid image the server must decode or refuse
    within its memory budget (made once per process: about 20 s)."""
    s = (side, side)
    grey16 = Image.new("I;16", s)
    rgba = Image.new("RGBA", s, (0, 0, 0, 100))
    cases = {
        "RGB PNG": (_save(Image.new("RGB", s), "PNG"), "image/png"),
        "RGB PNG rotated": (_save(Image.new("RGB", s), "PNG", exif=_rotated()), "image/png"),
        "RGBA PNG": (_save(rgba, "PNG"), "image/png"),
        "RGBA PNG rotated": (_save(rgba, "PNG", exif=_rotated()), "image/png"),
        "LA PNG": (_save(Image.new("LA", s), "PNG"), "image/png"),
        "palette PNG with transparency": (_save(Image.new("P", s), "PNG", transparency=0),
                                          "image/png"),
        "16-bit grey PNG": (_save(grey16, "PNG"), "image/png"),
        "16-bit grey PNG rotated": (_save(grey16, "PNG", exif=_rotated(8)), "image/png"),
        "32-bit integer TIFF": (_save(Image.new("I", s), "TIFF", compression="tiff_deflate"),
                                "image/png"),
        "float TIFF": (_save(Image.new("F", s), "TIFF", compression="tiff_deflate"),
                       "image/png"),
        "CMYK TIFF": (_save(Image.new("CMYK", s), "TIFF", compression="tiff_deflate"),
                      "image/png"),
        "GIF with transparency": (_save(Image.new("P", s), "GIF", transparency=0), "image/png"),
        "progressive JPEG 4:4:4": (_save(Image.new("RGB", s), "JPEG", progressive=True,
                                         subsampling=0), "image/jpeg"),
        "progressive CMYK JPEG": (_save(Image.new("CMYK", s), "JPEG", progressive=True),
                                  "image/jpeg"),
        "lossless WebP": (_save(rgba, "WEBP", lossless=True), "image/png"),
        "60 MB of PNG text": (text_chunks_png(), "image/png"),
    }
    for name, (body, _) in cases.items():
        assert len(body) < 6 * 2**20, (name, len(body))
    assert tuple(cases) == NAMES
    return cases
