"""Refuse to run on the CPU when a GPU is there but torch cannot use it (docs/platform.md, "SageMaker hosting").

The usual cause is an image built for a newer CUDA than the host's driver supports (this image's
torch is built for CUDA 13, which needs an NVIDIA driver >= 580), or a container started without
GPU access (`docker run --gpus all`). Falling back to the CPU would be silent and 30 to 100 times
slower, so both entry programs call ``check()`` first.
"""

from __future__ import annotations

import os
import shutil
import subprocess


class GPUUnavailable(RuntimeError):
    """A GPU is expected but torch cannot use it; the message names the driver and CUDA build."""


def _nvidia_smi(*args: str) -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def expected_gpus() -> int:
    """GPUs the job or host says are there: SM_NUM_GPUS (SageMaker training), else the count
    that `nvidia-smi --list-gpus` prints."""
    try:
        declared = int(os.environ.get("SM_NUM_GPUS") or 0)
    except ValueError:
        declared = 0
    listed = sum(1 for line in _nvidia_smi("--list-gpus").splitlines() if line.startswith("GPU "))
    return max(declared, listed)


def check() -> int:
    """Return the number of usable GPUs (0 on a CPU host).

    Raises:
        GPUUnavailable: GPUs are expected but ``torch.cuda.is_available()`` is False.
    """
    expected = expected_gpus()
    if expected == 0:
        return 0
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    driver = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader").splitlines()
    raise GPUUnavailable(
        f"{expected} GPU(s) expected (SM_NUM_GPUS or nvidia-smi) but torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}) cannot use them; host driver: "
        f"{driver[0] if driver else 'not visible (no nvidia-smi)'}. CUDA {torch.version.cuda} "
        f"needs an NVIDIA driver >= 580: use an instance whose driver supports it, or start the "
        f"container with GPU access (--gpus all). Refusing to fall back to the CPU."
    )
