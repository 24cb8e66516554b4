"""The real image, built once per session with podman for every test that runs it
(test_image.py's `IMAGE train` / `IMAGE serve`, test_local_mode.py's SDK local mode).

No image can be pulled here, so the base is Debian made with debootstrap and passed as
BASE_IMAGE; the Python wheels come from a wheelhouse made on the host (pip download), mounted
into the build. The Dockerfile is otherwise the one users build on the CUDA base.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BASE = "localhost/debian-python:bookworm"
IMAGE = "localhost/sagemaker-dog-breeds:test"
WHEELHOUSE = ROOT / ".wheelhouse"


def sh(*cmd: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run ``cmd``, stdout and stderr together as text; an AssertionError with the output's
    tail when it fails and ``check``."""
    result = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}")
    return result


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    """The image's ID, built from this checkout's Dockerfile and tagged IMAGE (podman's layer
    cache makes a rebuild of an unchanged tree take seconds). The ID, not the tag: another
    suite on this machine may tag its own build IMAGE while this one runs."""
    if sh("podman", "image", "exists", BASE, check=False).returncode != 0:
        rootfs = tmp_path_factory.mktemp("rootfs")
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
           "bookworm", str(rootfs), "http://deb.debian.org/debian", timeout=1200)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh("podman", "import", "-", BASE, stdin=tar.stdout, timeout=600)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    sh(sys.executable, "-m", "pip", "download", "-q", "-r",
       str(ROOT / "requirements" / "container.txt"), "-c",
       str(ROOT / "requirements" / "constraints.txt"), "setuptools>=68", "-d", str(WHEELHOUSE),
       timeout=1800)
    iidfile = tmp_path_factory.mktemp("image") / "id"
    sh("podman", "build", "-v", f"{WHEELHOUSE}:/wheelhouse:ro",
       "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "PIP_NO_INDEX=1",
       "--build-arg", "PIP_FIND_LINKS=/wheelhouse", "--build-arg", "PRETRAINED_ARCH=",
       "--iidfile", str(iidfile), "-t", IMAGE, str(ROOT), timeout=2400)
    return iidfile.read_text().strip().removeprefix("sha256:")
