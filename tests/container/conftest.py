"""The real image, built once per session with podman for every test that runs it
(test_image.py's `IMAGE train` / `IMAGE serve`, test_local_mode.py's SDK local mode).

No image can be pulled here, so the base is Debian made with debootstrap and passed as
BASE_IMAGE; the Python wheels come from a wheelhouse made on the host (pip download), mounted
into the build. The Dockerfile is otherwise the one users build on the CUDA base.
"""

from __future__ import annotations

import pytest

from tests.helpers.image import build, image_report


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> str:
    """The image's ID, built from this checkout's Dockerfile and tagged IMAGE (``build``; when
    `make test` built it in the background during the model tier, this is a cache hit). The
    ID, not the tag: another suite on this machine may tag its own build IMAGE while this one
    runs."""
    built = build(tmp_path_factory.mktemp("image"))
    REPORT.extend(image_report(built))
    return built


REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter):
    """CI's log shows the test image's size and its largest layers."""
    for line in REPORT:
        terminalreporter.write_line(line)
