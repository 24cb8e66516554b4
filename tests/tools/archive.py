"""A dogImages archive for the tests, and a loopback HTTP server for it.

``make_archive`` writes a zip in the real dogImages layout and counts (133 classes; 6,680 /
835 / 836 photos in ``dogImages/{train,valid,test}/NNN.Breed_name/``, and a ``__MACOSX/``
folder as the published archive has), made of tiny JPEGs cut from the sample dog photos.
``ArchiveServer`` serves bytes on 127.0.0.1 with HTTP Range support, and can cut a download
off half way or ignore ranges, as real servers do.
"""

from __future__ import annotations

import http.server
import io
import random
import threading
import zipfile
from pathlib import Path

from PIL import Image

from tests.conftest import DOG_PHOTOS
from tools import dogimages


def breed_folders() -> list[str]:
    return [f"{i + 1:03d}.Breed_{i + 1:03d}" for i in range(dogimages.CLASSES)]


def tiny_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` different 32x32 JPEGs cut from the sample photos."""
    rng = random.Random(seed)
    sources = []
    for path in DOG_PHOTOS:
        with Image.open(path) as img:
            sources.append(img.convert("RGB"))
    out = []
    for _ in range(count):
        img = rng.choice(sources)
        side = rng.randint(48, min(img.size))
        x, y = rng.randint(0, img.width - side), rng.randint(0, img.height - side)
        buf = io.BytesIO()
        img.crop((x, y, x + side, y + side)).resize((32, 32)).save(buf, "JPEG", quality=70)
        out.append(buf.getvalue())
    return out


def make_archive(path: Path, drop: str | None = None, missing_split: str | None = None,
                 extra: dict[str, bytes] | None = None) -> Path:
    """The archive at ``path``; ``drop`` leaves one photo out of that split, ``missing_split``
    leaves a split out, ``extra`` adds members by name."""
    folders = breed_folders()
    photos = tiny_jpegs(200)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, total in dogimages.SPLITS.items():
            if split == missing_split:
                continue
            per, rest = divmod(total - (split == drop), len(folders))
            n = 0
            for i, folder in enumerate(folders):
                for j in range(per + (i < rest)):
                    name = f"dogImages/{split}/{folder}/{folder.split('.')[1]}_{n:05d}.jpg"
                    zf.writestr(name, photos[n % len(photos)])
                    n += 1
        zf.writestr("__MACOSX/dogImages/._train", b"\0\5\26\7resource fork")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


class ArchiveServer:
    """Serves ``body`` at http://127.0.0.1:PORT/dogImages.zip. ``cut_after`` (bytes): the next
    response sends its headers for the whole length, then that many bytes, then closes (once).
    ``ranges``: honour Range requests. ``requests`` records each request's Range header."""

    def __init__(self, body: bytes, ranges: bool = True):
        self.body, self.ranges, self.cut_after = body, ranges, None
        self.requests: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(server.body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                else:
                    self.send_response(200)
                payload = server.body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cut_after is not None:
                    payload, server.cut_after = payload[:server.cut_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dogImages.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
