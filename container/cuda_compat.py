"""CUDA forward compatibility: use the image's compat driver libraries on an older host driver.

This image's torch is built for CUDA 13, which needs an NVIDIA driver >= 580; SageMaker's GPU
hosts run older branches unless an endpoint names an AMI version (container/gpu_hosts.py).
NVIDIA's CUDA images ship forward-compatibility libraries in /usr/local/cuda/compat, and AWS's
advice for bring-your-own containers ("Updating the CUDA compatibility setup") is an entry step
that puts them on LD_LIBRARY_PATH only when the host driver is older than theirs; NVIDIA
Container Toolkit >= 1.17.4 no longer mounts them itself.

Two rules of ours on top. Branches are compared, not full versions: any driver of the 580 branch
runs CUDA 13 (minor version compatibility), and compat libraries from a later 580 patch on a
580 host would only be a mismatch. And the choice is proven before the program commits to it:
a child process loads the compat libcuda and calls cuInit, since forward compatibility covers
only some driver branches and data-center GPUs. The dynamic loader reads LD_LIBRARY_PATH once at
start, so on success the entry program re-executes itself; on failure it carries on with the
host's driver, and gpu_check stops it with a message that names what was tried.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from gpu_check import COMPAT_RESULT, driver_branch, host_driver

COMPAT_DIR = "/usr/local/cuda/compat"
MARK = "CUDA_COMPAT_CHECKED"
PROBE_TIMEOUT_S = 60
# Loads whichever libcuda.so.1 the loader finds first and initialises CUDA (the driver API's
# first call, the one that fails when a driver cannot serve this GPU or these libraries).
PROBE = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
rc = cuda.cuInit(0)
name = ctypes.c_char_p()
cuda.cuGetErrorName(rc, ctypes.byref(name))
print(f"cuInit returned {rc} ({(name.value or b'?').decode()})")
sys.exit(0 if rc == 0 else 1)
"""


def compat_driver_version(compat_dir: str | None = None) -> str:
    """The driver version of the compat libcuda in ``compat_dir`` (default COMPAT_DIR):
    libcuda.so.580.65.06 -> "580.65.06"; "" when there is none (a CPU base image)."""
    versions = [os.path.basename(p)[len("libcuda.so."):]
                for p in glob.glob(os.path.join(compat_dir or COMPAT_DIR, "libcuda.so.*.*"))]
    versions = [v for v in versions if re.fullmatch(r"\d+(\.\d+)+", v)]
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")), default="")


def probe(library_path: str) -> tuple[bool, str]:
    """Run PROBE in a child process with ``library_path`` as LD_LIBRARY_PATH; returns whether
    cuInit succeeded and the child's last line (or why it did not run), within 60 s."""
    env = dict(os.environ, LD_LIBRARY_PATH=library_path)
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"the probe did not run: {exc}"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else f"exit status {done.returncode}"


def enable_if_needed() -> None:
    """Re-exec this program with the compat libraries first on LD_LIBRARY_PATH when the host
    driver's branch is older than theirs and a child process could initialise CUDA with them;
    otherwise return (at once on CPU hosts and on hosts of the same or a newer branch)."""
    if os.environ.get(MARK):
        return
    os.environ[MARK] = "1"
    compat = compat_driver_version()
    host = host_driver()
    if not compat or not host or driver_branch(host) >= driver_branch(compat):
        return
    paths = [COMPAT_DIR] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    ok, detail = probe(":".join(paths))
    if not ok:
        os.environ[COMPAT_RESULT] = (f"CUDA forward compatibility ({COMPAT_DIR}, driver "
                                     f"{compat}) failed on host driver {host}: {detail}")
        print(f"{os.environ[COMPAT_RESULT]}; not using it", file=sys.stderr, flush=True)
        return
    os.environ["LD_LIBRARY_PATH"] = ":".join(paths)
    os.environ[COMPAT_RESULT] = (f"CUDA forward compatibility ({COMPAT_DIR}, driver {compat}) "
                                 f"is on over host driver {host}")
    print(f"host driver {host} is of an older branch than the image's CUDA compat driver "
          f"{compat}, and {detail}: using {COMPAT_DIR}", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable] + sys.argv)
