"""Fixtures of the serving tests."""

from __future__ import annotations

import pytest

from tests.serve.worst_images import worst_cases


@pytest.fixture(scope="session")
def worst_images() -> dict[str, tuple[bytes, str]]:
    """The worst image of each decode path (tests/serve/worst_images.py), made once per run."""
    return worst_cases()
