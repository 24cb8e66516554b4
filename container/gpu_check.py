"""Refuse to run on the CPU when a GPU is there but torch cannot use it (docs/platform.md).

The usual causes: a host driver older than the image's CUDA needs (this image's torch is built
for CUDA 13, which needs an NVIDIA driver >= 580; SageMaker endpoints run 470 to 550 unless
given an AMI version), a GPU the build has no kernels for (V100 in CUDA 13 builds: torch would
pass ``is_available()`` and fail later with "no kernel image"), or a container started without
GPU access (`docker run --gpus all`). Falling back to the CPU would be silent and 30 to 100 times
slower, so both entry programs call ``check()`` first. A GPU counts as present when any of
SM_NUM_GPUS, nvidia-smi, the device files or the kernel module's /proc entries say so, so a
missing nvidia-smi or NVML does not hide it.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import gpu_hosts

PROC_VERSION = "/proc/driver/nvidia/version"
PROC_GPUS = "/proc/driver/nvidia/gpus/*"
DEVICE_FILES = "/dev/nvidia[0-9]*"
# Set by cuda_compat.enable_if_needed when forward compatibility was tried: what happened.
COMPAT_RESULT = "CUDA_COMPAT_RESULT"


class GPUUnavailable(RuntimeError):
    """A GPU is there but torch cannot use it; the message (one line, under the 1,024
    characters of a FailureReason) names the host driver, the CUDA build and the remedy."""


def _nvidia_smi(*args: str) -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def host_driver() -> str:
    """The host's NVIDIA driver version ("470.256.02") from nvidia-smi, else from the kernel
    module's /proc/driver/nvidia/version; "" when neither is there."""
    lines = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader").splitlines()
    if lines and re.match(r"\d+\.\d+", lines[0]):
        return lines[0].strip()
    try:
        with open(PROC_VERSION) as f:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", f.read())
    except OSError:
        return ""
    return match[1] if match else ""


def driver_branch(version: str) -> int | None:
    """The driver branch (major version) of "470.256.02": 470; None for ""."""
    match = re.match(r"(\d+)\.", version)
    return int(match[1]) if match else None


def device_files() -> int:
    """How many /dev/nvidiaN device files the container has (0 without GPU access)."""
    return len(glob.glob(DEVICE_FILES))


def expected_gpus() -> int:
    """GPUs the job or host says are there: the most of SM_NUM_GPUS (SageMaker training), the
    count `nvidia-smi --list-gpus` prints, the /dev/nvidiaN device files and the kernel module's
    /proc/driver/nvidia/gpus entries."""
    try:
        declared = int(os.environ.get("SM_NUM_GPUS") or 0)
    except ValueError:
        declared = 0
    listed = sum(1 for line in _nvidia_smi("--list-gpus").splitlines() if line.startswith("GPU "))
    return max(declared, listed, device_files(), len(glob.glob(PROC_GPUS)))


def role_of(program: str) -> str:
    """"train", or for `serve` "transform" in a batch transform job (SageMaker sets
    SAGEMAKER_BATCH there) and "endpoint" otherwise."""
    if program == "train":
        return "train"
    return "transform" if os.environ.get("SAGEMAKER_BATCH") else "endpoint"


def _cuda_major(torch) -> int:
    return int(str(torch.version.cuda or gpu_hosts.IMAGE_CUDA_MAJOR).split(".")[0])


def unavailable_message(torch, expected: int, role: str) -> str:
    """Why torch sees no GPU, with the host driver, the CUDA the image needs and the remedy."""
    cuda = torch.version.cuda
    major = _cuda_major(torch)
    need = gpu_hosts.MIN_DRIVER_BRANCH.get(major)
    driver = host_driver()
    parts = [f"{expected} GPU(s) present but torch {torch.__version__} (CUDA {cuda}) cannot use "
             f"them: host driver "
             f"{driver or 'unknown (no nvidia-smi, no /proc/driver/nvidia/version)'}, "
             f"CUDA {cuda} needs >= {need}"]
    if os.environ.get(COMPAT_RESULT):
        parts.append(os.environ[COMPAT_RESULT])
    if device_files() == 0:
        parts.append("the container has no /dev/nvidia* devices: start it with GPU access "
                     "(docker run --gpus all)")
    branch = driver_branch(driver)
    if need is not None and (branch is None or branch < need):
        parts.append(f"on SageMaker, {gpu_hosts.remedy(role, major)}")
    return "; ".join(parts) + ". Refusing to fall back to the CPU."


def check(program: str = "serve") -> int:
    """Return the number of usable GPUs (0 on a CPU host); ``program`` is "train" or "serve".

    Raises:
        GPUUnavailable: GPUs are there but ``torch.cuda.is_available()`` is False, or the
            build has no kernels for one of them (``torch.cuda.get_arch_list()``).
    """
    expected = expected_gpus()
    if expected == 0:
        return 0
    import torch

    role = role_of(program)
    if not torch.cuda.is_available():
        raise GPUUnavailable(unavailable_message(torch, expected, role))
    arch_list = torch.cuda.get_arch_list()
    for index in range(torch.cuda.device_count()):
        capability = tuple(torch.cuda.get_device_capability(index))
        if not gpu_hosts.has_kernels(capability, arch_list):
            raise GPUUnavailable(
                f"GPU {index} ({torch.cuda.get_device_name(index)}, compute capability "
                f"{capability[0]}.{capability[1]}) has no kernels in torch {torch.__version__} "
                f"(CUDA {torch.version.cuda}: {' '.join(arch_list)}): use an instance type "
                f"with a newer GPU ({', '.join(gpu_hosts.runnable_families(arch_list))}) or a "
                f"CPU instance type. Refusing to fall back to the CPU.")
    return torch.cuda.device_count()
