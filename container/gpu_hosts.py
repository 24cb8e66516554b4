"""NVIDIA GPU facts about SageMaker hosts and this image, kept in one place.

deploy.py reads them (``from container import gpu_hosts``) to choose an endpoint's AMI and to
refuse an instance type the image cannot run on before any AWS call; the entry programs read them
(gpu_check.py, beside this file in /opt/program) to name the same remedy when CUDA fails on a
host. Standard library only, since it runs in both places.

Where each fact comes from:
- AMI versions and their NVIDIA driver and CUDA: botocore 1.44.5's SageMaker service model, the
  documentation of ``ProductionVariant.InferenceAmiVersion`` and of
  ``TransformResources.TransformAmiVersion`` (which lists only driver 470 and 535 AMIs).
- The driver an endpoint instance runs without an AMI choice: AWS doc "Best practices to
  minimize interruptions during GPU driver upgrades" (470: p2, p3, p4d, p4de, g4dn, g5; 535:
  p5, g6; 550: p5e, p5en). AWS says nothing of the training fleet's driver, and
  CreateTrainingJob has no AMI choice.
- The oldest driver branch each CUDA major runs on (minor version compatibility): NVIDIA "CUDA
  Compatibility" and its data center driver support matrix (CUDA 12: 525, CUDA 13: 580).
- The GPU of each instance family: the EC2 instance type pages; their compute capability:
  NVIDIA's "CUDA GPUs" list.
- The kernels in the image: ``torch.cuda.get_arch_list()`` of torch 2.15.0+cu132
  (requirements/container.txt); tests/container/test_gpu_startup.py compares it with the
  installed torch.
- What each instance family runs on (``HOST_KINDS``): the EC2 instance type pages (Graviton
  families end in g after their generation; p6e-gb200 pairs B200 GPUs with Grace, an arm64
  CPU). tests/container/test_gpu_startup.py walks botocore's hosting, training, transform and
  processing enums and fails on a family missing here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The default build (Dockerfile, no TORCH_CUDA): torch's CUDA 13.2 wheels.
IMAGE_CUDA_MAJOR = 13
IMAGE_ARCH_LIST = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
MIN_DRIVER_BRANCH = {12: 525, 13: 580}
# The build argument that makes a CUDA 12 image (Dockerfile; docs/platform.md).
CUDA12_BUILD = "a CUDA 12 build of the image (build argument TORCH_CUDA, docs/platform.md)"


class HostError(ValueError):
    """An instance type or AMI this image cannot run on; the message is one line with the fix."""


@dataclass(frozen=True)
class GPUFamily:
    """An instance family's NVIDIA GPU and the driver branch its endpoints run by default
    (None where AWS's table does not list the family)."""

    gpu: str
    capability: tuple[int, int]
    default_driver: int | None


GPU_FAMILIES = {
    "p2": GPUFamily("K80", (3, 7), 470),
    "p3": GPUFamily("V100", (7, 0), 470),
    "p3dn": GPUFamily("V100", (7, 0), None),
    "g4dn": GPUFamily("T4", (7, 5), 470),
    "g5": GPUFamily("A10G", (8, 6), 470),
    "p4d": GPUFamily("A100", (8, 0), 470),
    "p4de": GPUFamily("A100", (8, 0), 470),
    "g6": GPUFamily("L4", (8, 9), 535),
    "g6e": GPUFamily("L40S", (8, 9), None),
    "p5": GPUFamily("H100", (9, 0), 535),
    "p5e": GPUFamily("H200", (9, 0), 550),
    "p5en": GPUFamily("H200", (9, 0), 550),
    "p6-b200": GPUFamily("B200", (10, 0), None),
    "p6-b300": GPUFamily("B300", (10, 3), None),
    "g7": GPUFamily("RTX PRO 4500 Blackwell", (12, 0), None),
    "g7e": GPUFamily("RTX PRO 6000 Blackwell", (12, 0), None),
}

# What an instance family's hosts are, for every family in botocore 1.44.5's instance type
# enums. The image is x86_64 (amd64) with CUDA: it runs on X86 and NVIDIA hosts only.
X86, NVIDIA = "x86_64 CPUs", "NVIDIA GPUs"
ARM = "Graviton (arm64) CPUs"
GRACE = "NVIDIA GPUs beside Grace (arm64) CPUs"
NEURON = "AWS Inferentia or Trainium (Neuron) accelerators"
GAUDI = "Intel Gaudi (Habana) accelerators"
HOST_KINDS = {
    **dict.fromkeys(("c4", "c5", "c5d", "c5n", "c6i", "c6in", "c7i", "c7i-flex", "c8i",
                     "c8i-flex", "m4", "m5", "m5d", "m6i", "m7i", "m7i-flex", "m8i", "m8i-flex",
                     "r5", "r5d", "r6i", "r7i", "r8i", "r8i-flex", "t2", "t3"), X86),
    **dict.fromkeys(("c6g", "c6gd", "c6gn", "c7g", "c8g", "m6g", "m6gd", "m8g", "r6g", "r6gd",
                     "r7gd", "r8g"), ARM),
    **dict.fromkeys(GPU_FAMILIES, NVIDIA),
    "p6e-gb200": GRACE,
    **dict.fromkeys(("inf1", "inf2", "trn1", "trn1n", "trn2"), NEURON),
    "dl1": GAUDI,
}
RUNS_ON = (X86, NVIDIA)


@dataclass(frozen=True)
class AMI:
    """An AMI version: its NVIDIA driver branch (None: a Neuron AMI), the CUDA it names, and the
    instance families it is offered on (None: not recorded here)."""

    driver: int | None
    cuda: str | None
    families: tuple[str, ...] | None = None


# AWS's list of instance families for the 580 AMI was not found (botocore documents only its
# driver and CUDA). What we could read: botocore's February 2025 documentation of the first GPU
# AMI listed g4dn, g5, g6, p3, p4d, p4de and p5 as its instance types, and public deployments
# use this AMI on g4dn, g5, g6, g7e and p6-b200. Assumed: every family above whose GPU the image
# has kernels for. Should AWS not offer it on one, CreateEndpointConfig fails at once with a
# ValidationException that deploy.py prints in one line, before any instance starts.
_AMI_580_FAMILIES = ("g4dn", "g5", "g6", "g6e", "g7", "g7e", "p4d", "p4de", "p5", "p5e",
                     "p5en", "p6-b200", "p6-b300")

INFERENCE_AMIS = {
    "al2-ami-sagemaker-inference-gpu-2": AMI(535, "12.2"),
    "al2-ami-sagemaker-inference-gpu-2-1": AMI(535, "12.2"),
    "al2-ami-sagemaker-inference-gpu-3-1": AMI(550, "12.4"),
    "al2023-ami-sagemaker-inference-gpu-4-1": AMI(580, "13.0", _AMI_580_FAMILIES),
    "al2-ami-sagemaker-inference-neuron-2": AMI(None, None),
}
TRANSFORM_AMIS = {
    "al2-ami-sagemaker-batch-gpu-470": AMI(470, None),
    "al2-ami-sagemaker-batch-gpu-535": AMI(535, None),
}
_KINDS = {"endpoint": (INFERENCE_AMIS, "--inference-ami-version", "InferenceAmiVersion"),
          "transform": (TRANSFORM_AMIS, "--transform-ami-version", "TransformAmiVersion")}


def instance_family(instance_type: str) -> str:
    """``ml.g5.xlarge`` -> ``g5``, ``ml.p6-b200.48xlarge`` -> ``p6-b200``; "" for anything that
    is not an ``ml.`` instance type (``local_gpu``)."""
    parts = instance_type.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "ml" else ""


def check_host(instance_type: str | None) -> str | None:
    """What ``instance_type``'s hosts are (``HOST_KINDS``), when the image runs there; None for
    what is not an ``ml.`` type (serverless, ``local``, ``local_gpu``).

    Raises:
        HostError: arm64 (Graviton, Grace), Neuron or Gaudi hosts, which this amd64 CUDA/CPU
            image cannot run on, or a family this table does not classify.
    """
    family = instance_family(instance_type or "")
    if not family:
        return None
    kind = HOST_KINDS.get(family)
    pick = "an x86 CPU type such as ml.c7i.xlarge or ml.m5.xlarge, or a GPU type of " + \
        ", ".join(runnable_families())
    if kind is None:
        raise HostError(f"{instance_type}: instance family {family} is not classified in "
                        f"container/gpu_hosts.py (HOST_KINDS), so whether the image runs there "
                        f"is unknown: pick {pick}, or add it there")
    if kind not in RUNS_ON:
        raise HostError(f"{instance_type} has {kind}; the image is built for x86_64 (amd64) "
                        f"with CUDA and cannot run there: pick {pick}")
    return kind


def has_kernels(capability: tuple[int, int], arch_list) -> bool:
    """Whether a CUDA build with these ``torch.cuda.get_arch_list()`` entries (``sm_86``,
    ``sm_90a``, ``compute_90``) runs on a GPU of compute capability ``(major, minor)``.

    NVIDIA's rules (CUDA C++ Programming Guide, "Binary Compatibility" and "Application
    Compatibility"): a cubin for sm_XY runs on X.Z for every Z >= Y, an arch-specific one
    (sm_90a) only on X.Y itself, a family-specific one (sm_100f) like a plain one; PTX
    (compute_XY) is compiled at load time for any capability >= X.Y.
    """
    for entry in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", entry)
        if not match:
            continue
        kind, built, suffix = match[1], (int(match[2]), int(match[3])), match[4]
        if suffix == "a":
            runs = built == capability
        elif kind == "compute" and not suffix:
            runs = built <= capability
        else:
            runs = built[0] == capability[0] and built[1] <= capability[1]
        if runs:
            return True
    return False


def runnable_families(arch_list=IMAGE_ARCH_LIST) -> list[str]:
    """The instance families (``ml.g5``) whose GPU the build has kernels for, in table order."""
    return [f"ml.{name}" for name, family in GPU_FAMILIES.items()
            if has_kernels(family.capability, arch_list)]


def check_gpu_family(instance_type: str, arch_list=IMAGE_ARCH_LIST,
                     cuda_major: int = IMAGE_CUDA_MAJOR) -> GPUFamily:
    """The GPU family of a GPU instance type, when the build has kernels for its GPU.

    Raises:
        HostError: a family this table does not know, or a GPU without kernels in the build
            (V100 in CUDA 13 builds).
    """
    name = instance_family(instance_type)
    family = GPU_FAMILIES.get(name)
    if family is None:
        raise HostError(f"{instance_type}: GPU family {name} is not in container/gpu_hosts.py, "
                        f"so its GPU and driver are unknown here: pick "
                        f"{', '.join(runnable_families(arch_list))}, or add it there")
    if not has_kernels(family.capability, arch_list):
        major, minor = family.capability
        raise HostError(f"{instance_type} has NVIDIA {family.gpu} GPUs (compute capability "
                        f"{major}.{minor}), for which the image's CUDA {cuda_major} build of "
                        f"torch has no kernels ({' '.join(arch_list)}): pick "
                        f"{', '.join(runnable_families(arch_list))}, or a CPU instance type")
    return family


def _best_ami(amis: dict[str, AMI], family: str | None, need: int) -> str | None:
    """The AMI with the newest driver >= ``need`` offered on ``family`` (None: on any)."""
    usable = [(ami.driver, name) for name, ami in amis.items()
              if ami.driver is not None and ami.driver >= need
              and (family is None or ami.families is None or family in ami.families)]
    return max(usable)[1] if usable else None


def choose_ami(instance_type: str | None, requested: str = "auto", kind: str = "endpoint",
               cuda_major: int = IMAGE_CUDA_MAJOR) -> str | None:
    """The AMI version an endpoint (``kind="endpoint"``, InferenceAmiVersion) or a transform job
    (``"transform"``, TransformAmiVersion) on ``instance_type`` must run for this image: None
    on CPU instance types and serverless endpoints (``instance_type`` None); ``requested``
    "auto" picks the AMI with the newest driver offered on the family.

    Raises:
        HostError: a host the image cannot run on (``check_host``); an unknown AMI name; an
            AMI on a CPU type or serverless endpoint; a GPU
            family unknown here or without kernels in the image; an AMI whose driver is older
            than the image's CUDA needs or that is not offered on the family; "auto" on a GPU
            type no AMI suits.
    """
    amis, option, field = _KINDS[kind]
    need = MIN_DRIVER_BRANCH[cuda_major]
    host = check_host(instance_type)
    if requested != "auto" and requested not in amis:
        raise HostError(f"{option} {requested} is not a known {field} (botocore 1.44.5): "
                        f"pass auto or one of {', '.join(amis)}")
    if host != NVIDIA:
        if requested != "auto":
            where = instance_type or "a serverless endpoint"
            raise HostError(f"{option} {requested} is for GPU instances and {where} has no "
                            f"GPU: leave the option out")
        return None
    family = instance_family(instance_type)
    check_gpu_family(instance_type, cuda_major=cuda_major)
    if requested == "auto":
        best = _best_ami(amis, family, need)
        if best is None:
            drivers = ", ".join(f"{name} (driver {ami.driver})" for name, ami in amis.items())
            raise HostError(f"{instance_type}: no {field} runs NVIDIA driver >= {need}, which "
                            f"the image's CUDA {cuda_major} needs (there are {drivers}): use a "
                            f"CPU instance type or {CUDA12_BUILD}")
        return best
    ami = amis[requested]
    if ami.driver is None:
        raise HostError(f"{option} {requested} is for Inferentia and Trainium (Neuron); this "
                        f"image runs on NVIDIA GPUs: pass auto")
    if ami.driver < need:
        cuda = f" (CUDA {ami.cuda})" if ami.cuda else ""
        best = _best_ami(amis, family, need)
        fix = f"pass auto ({best})" if best else f"use a CPU instance type or {CUDA12_BUILD}"
        raise HostError(f"{option} {requested} runs NVIDIA driver {ami.driver}{cuda}, older "
                        f"than the {need} the image's CUDA {cuda_major} needs: {fix}")
    if ami.families is not None and family not in ami.families:
        raise HostError(f"{option} {requested} is not offered on {instance_type} (only on "
                        f"{', '.join('ml.' + f for f in ami.families)})")
    return requested


def training_warning(instance_type: str, cuda_major: int = IMAGE_CUDA_MAJOR) -> str | None:
    """The warning for a training job on a GPU instance type (None on CPU types): AWS does not
    say which driver its training instances run, and a training job has no AMI choice.

    Raises:
        HostError: a host the image cannot run on (``check_host``), a GPU family unknown here
            or without kernels in the image.
    """
    if check_host(instance_type) != NVIDIA:
        return None
    check_gpu_family(instance_type, cuda_major=cuda_major)
    return (f"warning: {instance_type}: SageMaker does not say which NVIDIA driver its training "
            f"instances run and a training job has no AMI choice; the image's CUDA {cuda_major} "
            f"needs driver >= {MIN_DRIVER_BRANCH[cuda_major]} or CUDA forward compatibility, "
            f"which the container tries. If the job fails naming the driver, use "
            f"{CUDA12_BUILD}")


def remedy(role: str, cuda_major: int) -> str:
    """What a user does when CUDA cannot start on a SageMaker host, for the entry program's
    message; ``role`` is "endpoint", "transform" or "train"."""
    rebuild = f" or {CUDA12_BUILD}" if cuda_major > 12 else ""
    if role == "endpoint":
        ami = _best_ami(INFERENCE_AMIS, None, MIN_DRIVER_BRANCH[cuda_major])
        if ami:
            return (f"create the endpoint with InferenceAmiVersion {ami} (python deploy.py "
                    f"deploy does by default on GPU instance types)")
    if role in ("endpoint", "transform"):
        field = "InferenceAmiVersion" if role == "endpoint" else "TransformAmiVersion"
        return (f"no {field} offers driver >= {MIN_DRIVER_BRANCH[cuda_major]}: use a CPU "
                f"instance type{rebuild}")
    return (f"training jobs have no AMI choice and AWS does not say which driver their instances "
            f"run: use a CPU instance type{rebuild}")
