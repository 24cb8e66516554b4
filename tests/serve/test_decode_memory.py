"""What a decode really holds, against what serve.decode estimates before decoding: each worst
case (tests/serve/worst_images.py) decodes in a fresh process whose peak RSS (VmHWM, reset
through /proc/self/clear_refs) is read around the decode alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.serve.worst_images import NAMES

CHILD = r"""
import ctypes, io, json, sys
from PIL import Image
from contract.preprocess import Geometry
from serve import decode as d

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

g = Geometry(256, 224)
small = io.BytesIO(); Image.new("RGB", (64, 64)).save(small, "PNG")
d.decode(small.getvalue(), g, 50_000_000, 2_000_000)  # plugins and imports in place
body = sys.stdin.buffer.read()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status("VmRSS:")
out = {}
try:
    inspected = d.inspect(body, g, 50_000_000, 2_000_000)
    out["estimate"] = inspected.decode_bytes
    out["shape"] = list(d.to_model_input(inspected, g).shape)
except d.BadImage as exc:
    out["refused"] = str(exc)
out["peak"] = status("VmHWM:") - base
print(json.dumps(out))
"""


def _decode_in_child(body: bytes) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD], input=body, capture_output=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "60 MB of PNG text"])
def test_a_decode_holds_no_more_than_its_estimate(name, worst_images):
    result = _decode_in_child(worst_images[name][0])
    assert result.get("shape") == [224, 224, 3], result
    # The estimate is what the worker's memory budget counts: the real peak must stay under it.
    assert result["peak"] <= result["estimate"], result
    # ... and not by so much that the budget turns legitimate photos away.
    assert result["estimate"] <= 1.5 * result["peak"] + 16 * 2**20, result


def test_text_chunks_are_capped_before_they_fill_memory(worst_images):
    result = _decode_in_child(worst_images["60 MB of PNG text"][0])
    assert "text chunks" in result["refused"]
    assert result["peak"] < 8 * 2**20, result  # 60 MB of text was never unpacked


def test_a_grey_image_resized_as_grey_equals_its_rgb_copy_resized():
    """The decode resizes grey images before making them RGB (a quarter of the memory); the
    pixels must be what the training job's RGB image gives under torchvision's Resize."""
    import io

    import numpy as np
    from PIL import Image

    from contract.preprocess import Geometry, eval_geometry, to_rgb
    from serve.decode import decode

    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (731, 1093), dtype=np.uint8), "L")
    for img, fmt in ((grey, "PNG"), (Image.fromarray(
            rng.integers(0, 65536, (731, 1093), dtype=np.uint16)), "PNG")):
        buf = io.BytesIO()
        img.save(buf, fmt)
        g = Geometry(256, 224)
        served = decode(buf.getvalue(), g, 50_000_000, 2_000_000)
        trained = np.asarray(eval_geometry(to_rgb(Image.open(io.BytesIO(buf.getvalue()))), g))
        assert np.array_equal(served, trained)
