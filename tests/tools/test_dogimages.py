"""dogImages from a loopback server: the download (resumed, restarted), the checks before and
after extraction, and the bad archives, each ending in one line and leaving no tree a later run
would trust."""

from __future__ import annotations

import errno
import zipfile
from pathlib import Path

import pytest

from tests.tools.archive import ArchiveServer, make_archive
from tools import dogimages, fetch
from tools.folders import DatasetError

# Each test writes, checks or extracts the full-count archive (8,351 photos): seconds apiece,
# too many for the unit tier's 5 s a test on a slow machine.
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory) -> bytes:
    return make_archive(tmp_path_factory.mktemp("zip") / "dogImages.zip").read_bytes()


@pytest.fixture
def served(good_archive, monkeypatch):
    server = ArchiveServer(good_archive)
    monkeypatch.setenv("DOG_IMAGES_URL", server.url)
    yield server
    server.close()


def nothing_trusted(data: Path) -> None:
    """No dogImages folder and no half-extracted temporary one."""
    assert not (data / "dogImages").exists()
    assert not list(data.glob(".dogImages-*"))


def test_download_check_extract_and_reuse(tmp_path, served):
    said = []
    root = dogimages.ensure(tmp_path, say=said.append)
    assert root == tmp_path / "dogImages"
    assert {s: n for s, (_, n) in dogimages.count_images(root).items()} == dogimages.SPLITS
    assert not (tmp_path / "__MACOSX").exists() and not list(tmp_path.glob(".dogImages-*"))
    again = dogimages.ensure(tmp_path, say=said.append)
    assert again == root and said[-1].startswith(f"reusing {root}")
    assert len(served.requests) == 1  # the second run did not download


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, served):
    served.cut_after = len(served.body) // 2
    with pytest.raises(DatasetError, match=r"broke off at .* run again to resume it") as failed:
        dogimages.ensure(tmp_path)
    assert "\n" not in str(failed.value)
    part = tmp_path / "dogImages.zip.part"
    assert part.stat().st_size == len(served.body) // 2
    nothing_trusted(tmp_path)
    root = dogimages.ensure(tmp_path)
    assert served.requests[-1] == f"bytes={len(served.body) // 2}-"
    assert (tmp_path / "dogImages.zip").stat().st_size == len(served.body)
    dogimages.check(root)


def test_a_server_without_ranges_starts_the_download_over(tmp_path, served, capsys):
    served.ranges = False
    served.cut_after = 1000
    with pytest.raises(DatasetError, match="broke off"):
        dogimages.ensure(tmp_path)
    dogimages.ensure(tmp_path)
    assert "does not resume downloads; starting over" in capsys.readouterr().err
    assert (tmp_path / "dogImages.zip").stat().st_size == len(served.body)


def test_an_unreachable_source_is_not_a_bad_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("DOG_IMAGES_URL", "http://127.0.0.1:9/dogImages.zip")  # nothing listens
    with pytest.raises(dogimages.DogImagesUnavailable, match="cannot reach"):
        dogimages.ensure(tmp_path)


def _corrupt(body: bytes) -> bytes:
    """The archive with one photo's bytes flipped: its CRC no longer matches."""
    at = body.index(b"\xff\xd8\xff", 100) + 50
    return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]


BAD = {
    "missing split": (lambda tmp: make_archive(tmp / "a.zip", missing_split="test").read_bytes(),
                      r"dogImages/test: expected 133 classes and 836 images, found nothing"),
    "wrong counts": (lambda tmp: make_archive(tmp / "a.zip", drop="valid").read_bytes(),
                     r"dogImages/valid: expected 133 classes and 835 images, found 133 classes "
                     r"and 834 images"),
    "zip-slip name": (lambda tmp: make_archive(tmp / "a.zip", extra={"../../evil.sh": b"rm"})
                      .read_bytes(), r"member '\.\./\.\./evil\.sh' would be written outside"),
    "not a zip": (lambda tmp: b"<html><body>Access Denied</body></html>",
                  r"is not a zip archive"),
    "corrupt member": (lambda tmp: _corrupt(make_archive(tmp / "a.zip").read_bytes()),
                       r"member dogImages/\S+ is corrupt"),
    "truncated archive": (lambda tmp: make_archive(tmp / "a.zip").read_bytes()[:200_000],
                          r"is not a zip archive"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_archives_end_in_one_line_and_leave_nothing(tmp_path, served, name):
    make, words = BAD[name]
    served.body = make(tmp_path)
    data = tmp_path / "data"
    with pytest.raises(DatasetError, match=words) as failed:
        dogimages.ensure(data)
    message = str(failed.value)
    assert "\n" not in message and "run again to download it again" in message
    nothing_trusted(data)
    assert not (data / "dogImages.zip").exists()  # deleted: the next run downloads afresh
    assert not (tmp_path / "evil.sh").exists() and not (data.parent / "evil.sh").exists()


def test_no_space_left_while_extracting(tmp_path, served, monkeypatch):
    extract = zipfile.ZipFile.extract
    calls = []

    def full_disk(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", full_disk)
    with pytest.raises(DatasetError, match=r"No space left on device; \d+ MB free\): free some "
                                           r"space and run again") as failed:
        dogimages.ensure(tmp_path)
    assert "\n" not in str(failed.value)
    nothing_trusted(tmp_path)


def test_no_space_left_while_downloading(tmp_path, served, monkeypatch):
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fetch, "open", lambda path, mode: FullFile(real_open(path, mode)),
                        raising=False)
    with pytest.raises(DatasetError, match=r"no space left on the device writing .* free some "
                                           r"space there and run again"):
        dogimages.ensure(tmp_path)
    assert not (tmp_path / "dogImages.zip.part").exists()
    nothing_trusted(tmp_path)


def test_a_local_file_or_s3_copy_is_used_as_it_is(tmp_path, good_archive, monkeypatch):
    local = tmp_path / "mirror" / "dogImages.zip"
    local.parent.mkdir()
    local.write_bytes(good_archive)
    monkeypatch.setenv("DOG_IMAGES_URL", str(local))
    root = dogimages.ensure(tmp_path / "data")
    dogimages.check(root)
    assert not (tmp_path / "data" / "dogImages.zip").exists()  # not copied
    with pytest.raises(fetch.FetchError, match="expected an http"):
        fetch.fetch("ftp://example/x.zip", tmp_path / "x.zip")
