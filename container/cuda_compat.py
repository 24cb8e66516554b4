"""CUDA forward compatibility: use the image's compat driver libraries on older host drivers.

This image's torch is built for CUDA 13, which needs an NVIDIA driver >= 580; SageMaker's GPU
hosts run older branches (AWS doc "Best practices to minimize interruptions during GPU driver
upgrades" lists 470, 535 and 550). NVIDIA's CUDA images ship forward-compatibility libraries in
/usr/local/cuda/compat, and AWS's advice for bring-your-own containers ("Updating the CUDA
compatibility setup") is an entry step that puts them on LD_LIBRARY_PATH only when the host
driver is older than theirs. The dynamic loader reads LD_LIBRARY_PATH once at start, so the
entry program re-executes itself after setting it. Where forward compatibility does not cover
the GPU or driver, torch still sees no GPU and gpu_check stops the container with the versions.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

COMPAT_DIR = "/usr/local/cuda/compat"
MARK = "CUDA_COMPAT_CHECKED"


def _version(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in match.groups() if x is not None) if match else ()


def host_driver_version() -> tuple[int, ...]:
    """The host driver's version from nvidia-smi, or () when there is no GPU or tool."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return _version(out.splitlines()[0]) if out.strip() else ()


def compat_driver_version(compat_dir: str = COMPAT_DIR) -> tuple[int, ...]:
    """The driver version of the compat libcuda (libcuda.so.580.65.06 -> (580, 65, 6))."""
    libs = glob.glob(os.path.join(compat_dir, "libcuda.so.*.*"))
    return max((_version(os.path.basename(p)[len("libcuda.so."):]) for p in libs), default=())


def enable_if_needed() -> None:
    """Re-exec this program with the compat libraries first on LD_LIBRARY_PATH when the host
    driver is older than the compat driver; otherwise return at once (also on CPU hosts)."""
    if os.environ.get(MARK):
        return
    os.environ[MARK] = "1"
    compat = compat_driver_version()
    if not compat:
        return
    host = host_driver_version()
    if host and host < compat:
        paths = [COMPAT_DIR] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        os.environ["LD_LIBRARY_PATH"] = ":".join(paths)
        print(f"host driver {'.'.join(map(str, host))} is older than the image's CUDA "
              f"compat driver {'.'.join(map(str, compat))}: using {COMPAT_DIR}", file=sys.stderr,
              flush=True)
        os.execv(sys.executable, [sys.executable] + sys.argv)
