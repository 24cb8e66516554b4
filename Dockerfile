# One image for SageMaker training and hosting: `docker run IMAGE train` / `docker run IMAGE serve`.
#
# BASE_IMAGE: NVIDIA's smallest CUDA image, the `base` flavour: the CUDA runtime (cudart), the
# forward-compatibility libraries (/usr/local/cuda/compat) that container/cuda_compat.py tries on
# hosts whose driver is of an older branch than the image's CUDA, and the NVIDIA Container
# Toolkit's variables. Not `runtime` or `cudnn-runtime`: they add CUDA's math libraries, NCCL
# and cuDNN, which torch's wheels bring themselves (the nvidia-* wheels), so the image would
# carry them twice (docs/platform.md, "The image"). CI passes a local Debian base (debootstrap),
# since no image can be pulled there.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

# Build from a wheelhouse with no network: --build-arg PIP_NO_INDEX=1 --build-arg
# PIP_FIND_LINKS=/wheelhouse (and mount the wheelhouse there). Empty: install from the registry.
ARG PIP_NO_INDEX=""
ARG PIP_FIND_LINKS=""
# TORCH_CUDA: empty installs torch's CUDA 13.2 wheels from the registry (host driver >= 580).
# A PyTorch wheel index name (cu128) makes a CUDA 12 image for hosts on older drivers (SageMaker
# training and batch transform, which have no 580 AMI; docs/platform.md): torch and torchvision,
# at the versions container.txt pins, come from download.pytorch.org/whl/TORCH_CUDA first. Pass a
# CUDA 12 BASE_IMAGE with it (nvidia/cuda:12.8.1-base-ubuntu24.04), for its compat libraries.
ARG TORCH_CUDA=""
# ImageNet weights fetched into the image for network-isolated jobs ("" skips: CI has no route
# to download.pytorch.org).
ARG PRETRAINED_ARCH=resnet50

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    TORCH_HOME=/opt/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor-cache \
    PATH=/opt/program:/opt/venv/bin:$PATH

COPY requirements/container.txt requirements/constraints.txt /tmp/requirements/
# A C++ compiler and Python's headers stay in the image: serve compiles the model (AOTInductor,
# serve/compiled.py) once on each host it serves on, for that host's CPU (AVX2, AVX-512, AMX
# code paths differ, so a program compiled ahead on the training host could fail here), and
# triton builds its GPU launchers against Python's headers; smdebug's pyinstrument-cext, which
# PyPI ships only as source, needs them to install anyway. In the same layer, what the runtime
# never reads goes: apt's lists and downloaded packages (Ubuntu's images drop the packages
# themselves, a Debian base keeps them: 190 MB), and triton's AMD GPU code generator and
# bitcode (triton/backends/amd/lib, 101 MB; loaded only when compiling for a ROCm GPU, which a
# CUDA build of torch never does).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ \
        libc6-dev ca-certificates \
 && python3 -m venv /opt/venv \
 && if [ -n "${TORCH_CUDA}" ]; then \
      grep -E '^torch(vision)?==' /tmp/requirements/container.txt > /tmp/requirements/torch.txt \
      && pip install --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
             -r /tmp/requirements/torch.txt; \
    fi \
 && PIP_NO_INDEX="${PIP_NO_INDEX}" PIP_FIND_LINKS="${PIP_FIND_LINKS}" \
    pip install -r /tmp/requirements/container.txt -c /tmp/requirements/constraints.txt \
 && rm -rf /opt/venv/lib/python3*/site-packages/triton/backends/amd/lib \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml /tmp/src/
COPY contract /tmp/src/contract
COPY train /tmp/src/train
COPY serve /tmp/src/serve
RUN pip install --no-deps /tmp/src \
 && rm -rf /tmp/src /tmp/requirements \
 && if [ -n "${PRETRAINED_ARCH}" ]; then \
      python -c "import sys, torchvision; torchvision.models.get_model_weights(sys.argv[1]).DEFAULT.get_state_dict(progress=False, check_hash=True)" "${PRETRAINED_ARCH}"; \
    fi

COPY container/train container/serve container/compile container/gpu_check.py \
     container/cuda_compat.py container/gpu_hosts.py /opt/program/
WORKDIR /opt/program
EXPOSE 8080
