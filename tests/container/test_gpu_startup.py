"""What the entry programs do on a GPU host before training or serving, without a GPU: the host
driver, nvidia-smi, the device files and torch are faked; the forward-compatibility probe runs
for real in a child process against a fake libcuda compiled here."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

sys.path.append(str(ROOT / "container"))  # as the entry programs import them in /opt/program
import cuda_compat  # noqa: E402
import gpu_check  # noqa: E402
import gpu_hosts  # noqa: E402

AMI_580 = "al2023-ami-sagemaker-inference-gpu-4-1"


# ----------------------------------------------------------------------- every instance type
ENUMS = ("ProductionVariantInstanceType", "TrainingInstanceType", "TransformInstanceType",
         "ProcessingInstanceType")


def test_every_instance_type_in_botocores_enums_is_classified():
    """A botocore upgrade that adds an instance family fails here, not in a user's deploy."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    types = {t for name in ENUMS for t in model.shape_for(name).enum}
    families = {gpu_hosts.instance_family(t) for t in types}
    assert len(types) > 300 and "" not in families
    assert sorted(families - set(gpu_hosts.HOST_KINDS)) == []
    runnable = [t for t in types if gpu_hosts.HOST_KINDS[gpu_hosts.instance_family(t)]
                in gpu_hosts.RUNS_ON]
    assert "ml.c7i.xlarge" in runnable and "ml.g7.2xlarge" in runnable
    for t in ("ml.c7g.xlarge", "ml.inf2.xlarge", "ml.trn1.2xlarge", "ml.p6e-gb200.36xlarge",
              "ml.dl1.24xlarge"):
        with pytest.raises(gpu_hosts.HostError, match="cannot run there"):
            gpu_hosts.check_host(t)
    # Every NVIDIA family has its GPU recorded, so its kernels can be checked.
    nvidia = {f for f, kind in gpu_hosts.HOST_KINDS.items() if kind == gpu_hosts.NVIDIA}
    assert nvidia == set(gpu_hosts.GPU_FAMILIES)


def test_training_and_transform_refuse_a_host_the_image_cannot_run_on():
    with pytest.raises(gpu_hosts.HostError, match="Graviton"):
        gpu_hosts.training_warning("ml.m6g.xlarge")
    with pytest.raises(gpu_hosts.HostError, match="Neuron"):
        gpu_hosts.choose_ami("ml.inf2.xlarge", kind="transform")
    assert gpu_hosts.training_warning("ml.c5.xlarge") is None
    assert gpu_hosts.choose_ami("ml.g7.2xlarge") == AMI_580
    assert gpu_hosts.check_host("local_gpu") is None and gpu_hosts.check_host(None) is None


# -------------------------------------------------------------------------- kernels in a build
@pytest.mark.parametrize("capability, arch_list, runs", [
    ((7, 0), gpu_hosts.IMAGE_ARCH_LIST, False),   # V100: CUDA 13 dropped it
    ((3, 7), gpu_hosts.IMAGE_ARCH_LIST, False),   # K80
    ((7, 5), gpu_hosts.IMAGE_ARCH_LIST, True),    # T4
    ((8, 9), gpu_hosts.IMAGE_ARCH_LIST, True),    # L4 runs sm_86 code (same major, newer minor)
    ((10, 3), gpu_hosts.IMAGE_ARCH_LIST, True),   # B300 runs sm_100 code
    ((12, 0), gpu_hosts.IMAGE_ARCH_LIST, True),
    ((8, 0), ("sm_86", "sm_90"), False),          # a cubin never runs on an older minor
    ((10, 0), ("sm_90",), False),                 # ... nor on another major
    ((12, 0), ("sm_80", "compute_90"), True),     # PTX is compiled for any newer GPU
    ((8, 6), ("compute_90",), False),             # ... never for an older one
    ((9, 0), ("sm_90a",), True),                  # arch-specific: that capability only
    ((10, 0), ("sm_90a",), False),
    ((10, 3), ("sm_100f",), True),                # family-specific: the same major
])
def test_has_kernels_follows_nvidias_compatibility_rules(capability, arch_list, runs):
    assert gpu_hosts.has_kernels(capability, arch_list) is runs


def test_the_tables_arch_list_is_the_installed_torch_build():
    """deploy.py refuses instance types from IMAGE_ARCH_LIST without importing torch; it must
    be what the pinned torch (the image's) was built with."""
    import torch

    assert tuple(torch._C._cuda_getArchFlags().split()) == gpu_hosts.IMAGE_ARCH_LIST
    assert int(torch.version.cuda.split(".")[0]) == gpu_hosts.IMAGE_CUDA_MAJOR


def test_transform_jobs_have_no_ami_for_a_cuda_13_image():
    """botocore documents TransformAmiVersion values with drivers 470 and 535 only."""
    assert gpu_hosts.choose_ami("ml.m5.xlarge", kind="transform") is None
    with pytest.raises(gpu_hosts.HostError) as exc:
        gpu_hosts.choose_ami("ml.g5.xlarge", kind="transform")
    assert str(exc.value) == (
        "ml.g5.xlarge: no TransformAmiVersion runs NVIDIA driver >= 580, which the image's CUDA "
        "13 needs (there are al2-ami-sagemaker-batch-gpu-470 (driver 470), "
        "al2-ami-sagemaker-batch-gpu-535 (driver 535)): use a CPU instance type or a CUDA 12 "
        "build of the image (build argument TORCH_CUDA, docs/platform.md)")
    # a CUDA 12 build runs on the 535 AMI
    assert gpu_hosts.choose_ami("ml.g5.xlarge", kind="transform", cuda_major=12) == \
        "al2-ami-sagemaker-batch-gpu-535"
    with pytest.raises(gpu_hosts.HostError, match="driver 535, older than the 580 the image's "
                                                  "CUDA 13 needs: use a CPU instance type or"):
        gpu_hosts.choose_ami("ml.g5.xlarge", "al2-ami-sagemaker-batch-gpu-535", "transform")


# ------------------------------------------------------------------------ forward compatibility
def fake_libcuda(folder, cu_init_result: int, name: str) -> None:
    """A libcuda.so.1 whose cuInit returns ``cu_init_result`` and cuGetErrorName ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "fake.c"
    source.write_text(f"""
        int cuInit(unsigned int flags) {{ return {cu_init_result}; }}
        int cuGetErrorName(int error, const char **name) {{ *name = "{name}"; return 0; }}
    """)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(source)],
                   check=True)
    (folder / "libcuda.so.580.65.06").symlink_to("libcuda.so.1")


def test_probe_loads_the_compat_libcuda_in_a_child_and_reports_cuinit(tmp_path):
    fake_libcuda(tmp_path / "broken", 803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH")
    fake_libcuda(tmp_path / "fine", 0, "CUDA_SUCCESS")
    assert cuda_compat.probe(str(tmp_path / "broken")) == (
        False, "cuInit returned 803 (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)")
    assert cuda_compat.probe(f"{tmp_path / 'fine'}:{tmp_path / 'broken'}") == (
        True, "cuInit returned 0 (CUDA_SUCCESS)")
    assert cuda_compat.compat_driver_version(str(tmp_path / "fine")) == "580.65.06"


class Exec(Exception):
    """os.execv was called."""


@pytest.fixture
def host(monkeypatch, tmp_path):
    """A host with a compat folder of driver 580.95.05 and a settable host driver; execv and the
    probe are recorded instead of run."""
    compat = tmp_path / "compat"
    compat.mkdir()
    (compat / "libcuda.so.580.95.05").write_text("")
    state = SimpleNamespace(driver="470.256.02", probe=(True, "cuInit returned 0 (CUDA_SUCCESS)"),
                            probed=[])
    monkeypatch.setattr(cuda_compat, "COMPAT_DIR", str(compat))
    monkeypatch.setattr(cuda_compat, "host_driver", lambda: state.driver)

    def probe(path):
        state.probed.append(path)
        return state.probe

    def execv(*args):
        raise Exec(args)

    monkeypatch.setattr(cuda_compat, "probe", probe)
    monkeypatch.setattr(cuda_compat.os, "execv", execv)
    for name in (cuda_compat.MARK, gpu_check.COMPAT_RESULT):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/nvidia/lib64")
    return state


def test_an_older_branch_gets_the_compat_libraries_once_the_probe_passes(host):
    with pytest.raises(Exec):
        cuda_compat.enable_if_needed()
    first = f"{cuda_compat.COMPAT_DIR}:/usr/local/nvidia/lib64"
    assert host.probed == [first]
    assert os.environ["LD_LIBRARY_PATH"] == first
    assert "is on over host driver 470.256.02" in os.environ[gpu_check.COMPAT_RESULT]
    cuda_compat.enable_if_needed()  # the re-executed program does not probe again
    assert len(host.probed) == 1


def test_a_failed_probe_keeps_the_host_driver_and_says_why(host, capsys):
    host.probe = (False, "cuInit returned 804 (CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE)")
    cuda_compat.enable_if_needed()  # no Exec: carries on
    assert os.environ["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"
    result = os.environ[gpu_check.COMPAT_RESULT]
    assert result.startswith("CUDA forward compatibility (")
    assert "driver 580.95.05) failed on host driver 470.256.02: cuInit returned 804" in result
    assert "not using it" in capsys.readouterr().err


@pytest.mark.parametrize("driver", ["580.65.06", "595.10.01", ""])
def test_the_same_or_a_newer_branch_or_no_gpu_is_left_alone(host, driver):
    """580.65.06 is older than the compat 580.95.05 but of the same branch: forcing the compat
    libraries onto it would only risk a mismatch."""
    host.driver = driver
    cuda_compat.enable_if_needed()
    assert host.probed == [] and gpu_check.COMPAT_RESULT not in os.environ
    assert os.environ["LD_LIBRARY_PATH"] == "/usr/local/nvidia/lib64"


# --------------------------------------------------------------------------------- gpu_check
def fake_torch(available=True, capability=(8, 6), count=1, arch_list=gpu_hosts.IMAGE_ARCH_LIST):
    cuda = SimpleNamespace(is_available=lambda: available, device_count=lambda: count,
                           get_device_capability=lambda i: capability,
                           get_device_name=lambda i: "Tesla V100-SXM2-16GB",
                           get_arch_list=lambda: list(arch_list) if available else [])
    return SimpleNamespace(__version__="2.15.0+cu132", version=SimpleNamespace(cuda="13.2"),
                           cuda=cuda)


@pytest.fixture
def gpu_host(monkeypatch, tmp_path):
    """A host with one /dev/nvidia0 and the kernel module's version file, no nvidia-smi and no
    SM_NUM_GPUS (a hosting container whose image lacks the NVIDIA utilities)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").write_text("")
    (dev / "nvidiactl").write_text("")
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 "
                       "14:37:44 UTC 2024\nGCC version:  gcc version 10.5.0\n")
    monkeypatch.setattr(gpu_check, "DEVICE_FILES", str(dev / "nvidia[0-9]*"))
    monkeypatch.setattr(gpu_check, "PROC_GPUS", str(tmp_path / "no-gpus" / "*"))
    monkeypatch.setattr(gpu_check, "PROC_VERSION", str(version))
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    for name in ("SM_NUM_GPUS", "SAGEMAKER_BATCH", gpu_check.COMPAT_RESULT):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_no_nvidia_smi_does_not_hide_the_gpu(gpu_host, monkeypatch):
    """Before, expected_gpus() asked only SM_NUM_GPUS and nvidia-smi: an endpoint whose torch
    could not use its GPU ran on the CPU without a word."""
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    assert gpu_check.host_driver() == "470.256.02"
    with pytest.raises(gpu_check.GPUUnavailable) as exc:
        gpu_check.check("serve")
    message = str(exc.value)
    assert message == (
        "1 GPU(s) present but torch 2.15.0+cu132 (CUDA 13.2) cannot use them: host driver "
        "470.256.02, CUDA 13.2 needs >= 580; on SageMaker, create the endpoint with "
        f"InferenceAmiVersion {AMI_580} (python deploy.py deploy does by default on GPU instance "
        "types). Refusing to fall back to the CPU.")


def test_the_message_names_the_remedy_of_each_kind_of_job(gpu_host, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    monkeypatch.setenv(gpu_check.COMPAT_RESULT, "CUDA forward compatibility (/usr/local/cuda/"
                       "compat, driver 580.95.05) failed on host driver 470.256.02: cuInit "
                       "returned 803 (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)")
    with pytest.raises(gpu_check.GPUUnavailable) as exc:
        gpu_check.check("train")
    train = str(exc.value)
    assert "cuInit returned 803 (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)" in train
    assert ("on SageMaker, training jobs have no AMI choice and AWS does not say which driver "
            "their instances run: use a CPU instance type or a CUDA 12 build of the image (build "
            "argument TORCH_CUDA, docs/platform.md). Refusing to fall back to the CPU.") in train
    monkeypatch.setenv("SAGEMAKER_BATCH", "true")
    with pytest.raises(gpu_check.GPUUnavailable) as exc:
        gpu_check.check("serve")
    assert "no TransformAmiVersion offers driver >= 580: use a CPU instance type or a CUDA 12 " \
           "build" in str(exc.value)
    for message in (train, str(exc.value)):  # the FailureReason keeps 1,024 characters
        assert len(message) < 1024 and "\n" not in message


def test_a_container_without_gpu_access_is_told_so(gpu_host, monkeypatch):
    monkeypatch.setattr(gpu_check, "DEVICE_FILES", str(gpu_host / "none" / "*"))
    monkeypatch.setenv("SM_NUM_GPUS", "1")
    monkeypatch.setitem(sys.modules, "torch", fake_torch(available=False))
    with pytest.raises(gpu_check.GPUUnavailable, match=r"no /dev/nvidia\* devices: start it "
                                                       r"with GPU access \(docker run --gpus"):
        gpu_check.check("train")


def test_a_gpu_without_kernels_in_the_build_is_refused(gpu_host, monkeypatch):
    """A V100 passes torch.cuda.is_available() and fails at the first kernel."""
    monkeypatch.setitem(sys.modules, "torch", fake_torch(capability=(7, 0)))
    with pytest.raises(gpu_check.GPUUnavailable) as exc:
        gpu_check.check("train")
    assert str(exc.value).startswith(
        "GPU 0 (Tesla V100-SXM2-16GB, compute capability 7.0) has no kernels in torch "
        "2.15.0+cu132 (CUDA 13.2: sm_75 sm_80 sm_86 sm_90 sm_100 sm_120): use an instance type "
        "with a newer GPU (ml.g4dn, ml.g5, ml.p4d, ")


def test_usable_gpus_and_cpu_hosts_pass(gpu_host, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(capability=(8, 9), count=1))
    assert gpu_check.check("serve") == 1
    monkeypatch.setattr(gpu_check, "DEVICE_FILES", str(gpu_host / "none" / "*"))
    monkeypatch.setitem(sys.modules, "torch", None)  # a CPU host never imports torch here
    assert gpu_check.check("serve") == 0
