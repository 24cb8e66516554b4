"""The test image: a Debian base made with debootstrap, the wheels from a wheelhouse made on the
host, and this checkout's Dockerfile, built with podman (tests/container/conftest.py's ``image``
fixture). ``python -m tests.helpers.image`` builds it alone: `make test` starts that in the
background while the model tier runs, so that the system tier finds it in podman's cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


def image_id(reference: str) -> str | None:
    """The ID podman has for ``reference`` (a tag or an ID), or None when it has none."""
    done = sh("podman", "image", "inspect", "--format", "{{.Id}}", reference, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def image_report(reference: str) -> list[str]:
    """The image's size and what each layer adds (podman's own figures, unpacked)."""
    total = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", reference).stdout)
    layers = json.loads(sh("podman", "history", "--format", "json", reference).stdout)
    lines = [f"test image {IMAGE}: {total / 1e9:.2f} GB ({total / 2**30:.2f} GiB), "
             f"{len(layers)} layers; the largest:"]
    for layer in sorted(layers, key=lambda layer: -int(layer.get("size", 0)))[:6]:
        created = " ".join(str(layer.get("CreatedBy", layer.get("createdBy", ""))).split())
        lines.append(f"  {int(layer.get('size', 0)) / 1e9:6.2f} GB  {created[:110]}")
    return lines


def build(work: Path) -> str:
    """Builds the test image from this checkout's Dockerfile, tags it IMAGE and returns its ID
    (``work``: an empty folder for the base's root file system and the ID file). podman's layer
    cache makes a rebuild of an unchanged tree take seconds. The image the tag named before is
    removed once a new one replaces it (each rebuild would otherwise leave a dangling ~7 GB
    image); podman keeps one a container still uses.

    Raises:
        AssertionError: a step failed (with its output's tail).
    """
    if sh("podman", "image", "exists", BASE, check=False).returncode != 0:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
           "bookworm", str(rootfs), "http://deb.debian.org/debian", timeout=1200)
        for package in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            package.unlink()  # what debootstrap installed from: no image needs the files
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh("podman", "import", "-", BASE, stdin=tar.stdout, timeout=600)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    sh(sys.executable, "-m", "pip", "download", "-q", "-r",
       str(ROOT / "requirements" / "container.txt"), "-c",
       str(ROOT / "requirements" / "constraints.txt"), "setuptools>=68", "-d", str(WHEELHOUSE),
       timeout=1800)
    previous = image_id(IMAGE)
    iidfile = work / "id"
    sh("podman", "build", "-v", f"{WHEELHOUSE}:/wheelhouse:ro",
       "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "PIP_NO_INDEX=1",
       "--build-arg", "PIP_FIND_LINKS=/wheelhouse", "--build-arg", "PRETRAINED_ARCH=",
       "--iidfile", str(iidfile), "-t", IMAGE, str(ROOT), timeout=2400)
    built = iidfile.read_text().strip().removeprefix("sha256:")
    if previous is not None and previous != built:
        sh("podman", "rmi", previous, check=False)  # with its layers no other image shares
    return built


def main() -> int:
    """Builds the image; prints its ID."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="image-build-") as work:
        print(build(Path(work)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
