"""The model artifact in /opt/ml/model: its format, file names and manifest, as both sides see it.

train/export/artifact.py writes it (the order of writes, the export) and serve/model.py loads it;
this module holds what they must agree on:

- ``FORMAT`` and ``FORMAT_VERSION``: the manifest's ``format`` and ``format_version``; a server
  loads the versions in ``SUPPORTED_VERSIONS``.
- ``PROGRAM`` (``model.pt2``): a ``torch.export`` program, input float32 NCHW
  [B, 3, crop, crop] normalised, B dynamic from 1 to ``MAX_BATCH``; output float32 logits
  [B, num_classes]. ``INT8_PROGRAM`` (``model-int8.pt2``): the optional int8 program of the same
  network (contract/precisions.py). Loading either runs code the archive carries
  (``torch.export.load`` unpickles parts of it): load only artifacts your own job wrote.
- ``MANIFEST`` (``manifest.json``), written last: no manifest, no model. ``validate_manifest``
  checks every field serve reads; ``read_manifest`` reads and checks it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

FORMAT = "sagemaker-dog-breeds/model"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (FORMAT_VERSION,)
PROGRAM = "model.pt2"
INT8_PROGRAM = "model-int8.pt2"
MANIFEST = "manifest.json"
# The exported programs' largest batch (their dynamic batch dimension's upper bound): a server's
# max batch size can be no larger.
MAX_BATCH = 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(RuntimeError):
    """The model dir does not hold an artifact this server can load; the message names the file
    or the manifest field at fault."""


class ArtifactMissing(ArtifactError):
    """No complete artifact yet (no manifest.json): a training job or a copy may still be
    writing it, so the loader keeps looking."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, hex (read 1 MB at a time).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plain_file_name(name: object) -> bool:
    """Whether ``name`` is a file name inside the model dir: a non-empty string with no path
    separator and no leading dot (so a manifest cannot point outside the folder)."""
    return (isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name
            and not name.startswith("."))


def _field(manifest: dict, path: str, kind, check=None, rule: str = "") -> object:
    """``manifest``'s field at dotted ``path``, checked to be a ``kind`` (bool is never an int
    here) and to pass ``check``.

    Raises:
        ArtifactError: missing, of another type, or failing ``check`` (``rule`` says why).
    """
    value: object = manifest
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None or isinstance(value, bool) or not isinstance(value, kind) or (
            check is not None and not check(value)):
        expected = rule or (kind.__name__ if isinstance(kind, type) else
                            " or ".join(k.__name__ for k in kind))
        raise ArtifactError(f"{MANIFEST}: field {path!r} is {value!r:.80}; expected {expected}")
    return value


def validate_manifest(manifest: object) -> dict:
    """Check every manifest field serve reads, once, before anything loads: format and
    format_version, the program's file name and sha256, the classes, the preprocessing, the
    input's max batch, the model version, and ``training`` (an object when present). A
    malformed ``precisions`` or ``baseline`` is not an error: the model is then served in fp32
    and scores no drift (serve/precision.py, serve/drift.py). Returns ``manifest``.

    Raises:
        ArtifactError: the first field that is missing or wrong, named with what was expected.
    """
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST} holds a {type(manifest).__name__}, not an object")
    _field(manifest, "format", str, lambda v: v == FORMAT, repr(FORMAT))
    _field(manifest, "format_version", int, lambda v: v in SUPPORTED_VERSIONS,
           f"one of {SUPPORTED_VERSIONS} (use a server built for it)")
    _field(manifest, "program", str, plain_file_name, "a file name in the model dir")
    _field(manifest, "program_sha256", str, _SHA256.fullmatch, "64 lowercase hex digits")
    classes = _field(manifest, "classes", list,
                     lambda v: len(v) >= 1 and all(isinstance(c, str) for c in v),
                     "a list of class names")
    _field(manifest, "num_classes", int, lambda v: v == len(classes),
           f"the number of classes listed ({len(classes)})")
    _field(manifest, "preprocess", dict)
    for key in ("resize", "crop"):
        _field(manifest, f"preprocess.{key}", int, lambda v: 1 <= v <= 4096,
               "an integer from 1 to 4096 (pixels)")
    for key, minimum in (("mean", -math.inf), ("std", 0.0)):
        _field(manifest, f"preprocess.{key}", list, lambda v, m=minimum: len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and x > m for x in v), f"3 finite numbers{' > 0' if minimum == 0 else ''}")
    _field(manifest, "input.max_batch", int, lambda v: v >= 1, "an integer >= 1")
    _field(manifest, "model_version", str, bool, "a non-empty string")
    if manifest.get("training") is not None:
        _field(manifest, "training", dict, rule="an object")
    return manifest


def read_manifest(model_dir: Path) -> dict:
    """Read ``model_dir/manifest.json`` and check every field (``validate_manifest``).

    Raises:
        ArtifactMissing: there is no manifest.json (yet).
        ArtifactError: not JSON, or a field that is missing or wrong (named).
    """
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactMissing(f"{path} is missing: the model dir holds no complete artifact "
                              f"(train writes {MANIFEST} last)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    return validate_manifest(manifest)


def check_program(path: Path, expected_sha256: str | None, sha_field: str) -> None:
    """Check the program file at ``path`` before it is loaded: it exists and, when
    ``expected_sha256`` is given (manifest field ``sha_field``), has that sha256, so a program
    that is not the one the manifest describes, or a partial copy, is never loaded.

    Raises:
        ArtifactError: the file is missing or its sha256 differs.
    """
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the manifest names it")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ArtifactError(f"{path}: its sha256 is not the manifest's {sha_field} "
                            f"({expected_sha256[:12]}...): another program or a partial copy")
