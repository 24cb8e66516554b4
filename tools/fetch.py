"""Fetching one large file from wherever the user keeps it: an http(s) URL, an S3 URI or a
local path.

HTTP downloads show a tqdm progress bar, write to ``NAME.part`` and rename it only when the
body is complete; an interrupted download leaves the ``.part`` file, and the next try asks the
server for the rest (an HTTP Range request) or, when the server does not do ranges, starts over.
Errors are one line that says what to do: ``Unreachable`` when the source cannot be reached at
all (no network, no such host), ``FetchError`` for anything else.
"""

from __future__ import annotations

import errno
import http.client
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

CHUNK_BYTES = 1 << 20


class FetchError(RuntimeError):
    """The file could not be fetched; the message says why and what to do."""


class Unreachable(FetchError):
    """The source could not be reached at all (no network, unknown host, refused)."""


def _no_space(exc: OSError, dest: Path) -> FetchError | None:
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(dest.parent).free / 2**20
        return FetchError(f"no space left on the device writing {dest} ({free:.0f} MB free): free "
                          f"some space there and run again")
    return None


def is_local(source: str) -> bool:
    """Whether ``source`` names a local file (a path or a file:// URL)."""
    return urllib.parse.urlparse(source).scheme in ("", "file")


def fetch(source: str, dest: Path, timeout_s: float = 30.0) -> Path:
    """Make the file ``source`` names available locally; returns its path (``dest`` for a
    download, the file itself for a local path).

    Raises:
        Unreachable: the host or the network cannot be reached.
        FetchError: anything else (HTTP error, a body shorter than announced, S3 access, no
            space left, a missing local file).
    """
    scheme = urllib.parse.urlparse(source).scheme
    dest = Path(dest)
    if scheme in ("", "file"):
        path = Path(urllib.parse.urlparse(source).path if scheme else source)
        if not path.is_file():
            raise FetchError(f"{path} does not exist")
        return path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if scheme == "s3":
        return _from_s3(source, dest)
    if scheme in ("http", "https"):
        return _download(source, dest, timeout_s)
    raise FetchError(f"{source}: expected an http(s) URL, an s3:// URI or a file path")


def _from_s3(uri: str, dest: Path) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    part = dest.with_name(dest.name + ".part")
    try:
        boto3.client("s3").download_file(bucket, key, str(part))
    except EndpointConnectionError as exc:
        raise Unreachable(f"cannot reach S3 for {uri}: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        part.unlink(missing_ok=True)
        raise FetchError(f"cannot read {uri}: {exc}; check the URI and your AWS credentials") \
            from exc
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise _no_space(exc, dest) or FetchError(f"cannot write {dest}: {exc}") from exc
    part.replace(dest)
    return dest


def _download(url: str, dest: Path, timeout_s: float) -> Path:
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            resumed = have and response.status == 206
            if have and not resumed:
                print(f"{url}: the server does not resume downloads; starting over",
                      file=sys.stderr)
            start = have if resumed else 0
            length = int(response.headers.get("Content-Length") or 0)
            total = start + length if length else None
            if resumed:
                print(f"resuming the download of {url} at {start / 2**20:.1f} MB",
                      file=sys.stderr)
            done = start
            with open(part, "ab" if resumed else "wb") as out, \
                    tqdm(total=total, initial=start, unit="B", unit_scale=True,
                         desc=dest.name, file=sys.stderr) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # the range starts past the end: the .part file is not this file
            part.unlink(missing_ok=True)
        raise FetchError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot reach {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # a cut, a timeout, a full disk
        no_space = _no_space(exc, dest) if isinstance(exc, OSError) else None
        if no_space:
            part.unlink(missing_ok=True)
            raise no_space from exc
        raise FetchError(f"the download of {url} broke off at {part.stat().st_size / 2**20:.1f} "
                         f"MB ({type(exc).__name__}: {exc}); run again to resume it") from exc
    if total and done != total:
        raise FetchError(f"the download of {url} broke off at {done / 2**20:.1f} of "
                         f"{total / 2**20:.1f} MB; run again to resume it")
    part.replace(dest)
    return dest
