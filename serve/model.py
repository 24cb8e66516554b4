"""The model artifact that `train` wrote: manifest.json plus a torch.export program.

serve reads the files, never train's code (format_version 1; see train/artifact.py for the
writer). Loading happens in each gunicorn worker after the fork, because CUDA does not survive a
fork; each worker may be pinned to its own GPU. Only the scheduler's model thread calls
``forward``: all torch work of a worker runs on that one thread.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from serve.decode import Geometry
from serve.precision import Choice, import_x86_quantizer, int8_program

logger = logging.getLogger("serve")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

SUPPORTED_FORMAT = "sagemaker-dog-breeds/model"
SUPPORTED_VERSIONS = (1,)


class ArtifactError(RuntimeError):
    """The model dir does not hold an artifact this server can load; the message names the file
    or the manifest field at fault."""


class ArtifactMissing(ArtifactError):
    """No complete artifact yet (no manifest.json): a training job or a copy may still be
    writing it, so the loader keeps looking."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        raise ArtifactError(f"manifest.json: field {path!r} is {value!r:.80}; expected {expected}")
    return value


def _plain_file_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def validate_manifest(manifest: object) -> dict:
    """Check every manifest field serve reads, once, before anything loads: format and
    format_version, the program's file name and sha256, the classes, the preprocessing, the
    input's max batch, the model version, and ``training`` (an object when present). A
    malformed ``precisions`` or ``baseline`` is not an error: as serve/precision.py and
    serve/drift.py promise, the model is then served in fp32 and scores no drift (the loader
    logs why). Returns ``manifest``.

    Raises:
        ArtifactError: the first field that is missing or wrong, named with what was expected.
    """
    if not isinstance(manifest, dict):
        raise ArtifactError(f"manifest.json holds a {type(manifest).__name__}, not an object")
    _field(manifest, "format", str, lambda v: v == SUPPORTED_FORMAT, repr(SUPPORTED_FORMAT))
    _field(manifest, "format_version", int, lambda v: v in SUPPORTED_VERSIONS,
           f"one of {SUPPORTED_VERSIONS} (use a server built for it)")
    _field(manifest, "program", str, _plain_file_name, "a file name in the model dir")
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
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise ArtifactMissing(f"{path} is missing: the model dir holds no complete artifact "
                              f"(train writes manifest.json last)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    return validate_manifest(manifest)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex (read 1 MB at a time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] to the model's input float32 [N, 3, H, W] (channels_last memory):
    scaled to 0-1 and normalised, with the same arithmetic as the training job's evaluation
    transform (torchvision's ToDtype(scale=True) then Normalize). ``mean``, ``std``: [1, 3, 1, 1].
    """
    # NHWC uint8 viewed as NCHW is channels_last already: no copy for the layout.
    return images.permute(0, 3, 1, 2).to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


class Classifier:
    """A loaded artifact on one device: ``forward`` turns a batch of decoded images into class
    probabilities. Not thread-safe by design: the scheduler's model thread is its only caller
    (on the CPU each thread that calls torch gets its own OpenMP team, and a team that just
    finished spin-waits on the cores the busy one needs)."""

    def __init__(self, model_dir: Path, device: torch.device,
                 choice: Choice = Choice("fp32", False, "default"), manifest: dict | None = None):
        """Load the artifact's program for ``choice`` on ``device``: the file is checked against
        its sha256 first, and the program's output against the classes.

        Args:
            manifest: the artifact's manifest, validated (``read_manifest``); read when None.

        Raises:
            ArtifactError: a missing or altered program, one torch cannot load, one whose
                output is not one logit per class, or a precision the artifact or device lacks.
        """
        self.manifest = manifest if manifest is not None else read_manifest(model_dir)
        pre = self.manifest["preprocess"]
        self.geometry = Geometry(int(pre["resize"]), int(pre["crop"]))
        self.classes: list[str] = self.manifest["classes"]
        self.version: str = self.manifest["model_version"]
        self.device = device
        self.choice = choice
        if choice.precision == "int8":
            name, sha, sha_field = self._int8_program(device)
        else:
            name, sha, sha_field = (self.manifest["program"], self.manifest["program_sha256"],
                                    "program_sha256")
        program_path = Path(model_dir) / name
        check_program(program_path, sha, sha_field)
        try:
            program = torch.export.load(str(program_path))
        except Exception as exc:  # torch raises several types for a bad archive
            raise ArtifactError(f"cannot load {program_path}: {exc}") from exc
        self._autocast = AUTOCAST.get(choice.precision)
        self._mean = torch.tensor(pre["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # channels_last: faster convolutions on CUDA and with oneDNN on the CPU.
        self.eager = program.module().to(device).to(memory_format=torch.channels_last)
        self.module = self.eager
        self.buckets: list[int] = []  # batch sizes compiled for; batches are padded up to one
        self._check_output(program_path)
        if choice.compile:
            import torch._inductor.config as inductor_config

            # Weights as constants: inductor folds them and prepacks them for oneDNN.
            inductor_config.freezing = True
            # inductor's own int8 lowering warns about its own tensor copy on every conv, and
            # its C++ toolchain lookup logs "No CUDA runtime is found" on a CPU host: noise
            # that sends users hunting in a healthy worker's log.
            warnings.filterwarnings("ignore", message="To copy construct from a tensor",
                                    category=UserWarning)
            if device.type == "cpu":
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            self.module = torch.compile(self.eager, dynamic=False)

    def _check_output(self, program_path: Path) -> None:
        """One blank image through the eager program: it must give one logit per class (more
        would answer indexes past the class list, fewer would shift every label).

        Raises:
            ArtifactError: another output shape, or the program fails on a valid input.
        """
        try:
            probabilities = self.forward(np.zeros((1, self.geometry.crop, self.geometry.crop, 3),
                                                  np.uint8))
        except Exception as exc:  # noqa: BLE001 - any failure here is the artifact's
            raise ArtifactError(f"{program_path} fails on a blank {self.geometry.crop}x"
                                f"{self.geometry.crop} image: {type(exc).__name__}: {exc}"
                                ) from exc
        if probabilities.shape != (1, len(self.classes)):
            raise ArtifactError(f"{program_path} outputs {probabilities.shape[1:]} logits per "
                                f"image; manifest.json lists {len(self.classes)} classes")

    def use_eager(self, reason: str) -> None:
        """Serve the program uncompiled from now on (compiling it failed: ``reason``)."""
        self.module, self.buckets = self.eager, []
        self.choice = Choice(self.choice.precision, False,
                             f"{self.choice.precision}, eager: compiling failed ({reason})")

    def _int8_program(self, device: torch.device) -> tuple[str, str | None, str]:
        """The int8 program's file name, its sha256 (when the manifest records one) and that
        field's name, with torchao's int8 lowering registered for it.

        Raises:
            ArtifactError: not a CPU, or the artifact has no int8 program.
        """
        name = int8_program(self.manifest.get("precisions"))
        if device.type != "cpu":
            raise ArtifactError("int8 runs on CPU hosts only: set SERVE_PRECISION to auto, "
                                "fp16, bf16 or fp32 on a GPU host")
        if name is None:
            raise ArtifactError("this artifact has no int8 program (train it with "
                                "int8-calibration-images > 0), so SERVE_PRECISION=int8 cannot "
                                "be served")
        importlib.import_module("torch.ao.quantization.fx._decomposed")  # the int8 ops
        # Registers inductor's passes that lower the program's quantize/dequantize pairs into
        # oneDNN int8 kernels (without them the compiled program runs the reference
        # decomposition, slower than fp32).
        import_x86_quantizer()
        sha = self.manifest["precisions"]["int8"].get("program_sha256")
        return name, sha if isinstance(sha, str) else None, "precisions.int8.program_sha256"

    @torch.inference_mode()
    def forward(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, num_classes] for decoded images uint8
        [N, crop, crop, 3] (serve.decode.to_model_input), scaled to 0-1 and normalised with the
        manifest's mean and std as the training job's evaluation transform does, in the chosen
        precision (autocast, as the training job measured it)."""
        n = len(images)
        bucket = next((b for b in self.buckets if b >= n), None)
        if bucket is not None and bucket > n:  # a compiled size: pad rather than recompile
            images = np.concatenate([images, np.zeros((bucket - n,) + images.shape[1:],
                                                      images.dtype)])
        x = normalise(torch.from_numpy(images).to(self.device, non_blocking=True), self._mean,
                      self._std)
        with torch.autocast(self.device.type, dtype=self._autocast or torch.float32,
                            enabled=self._autocast is not None):
            logits = self.module(x)
        return torch.softmax(logits.float(), dim=1)[:n].cpu().numpy()

    def warm_up(self, batch_size: int) -> float:
        """Runs blank images at batch 1 and at ``batch_size`` (compiled: at every bucket size,
        powers of two up to ``batch_size``, which compiles them); returns the ms per image at
        ``batch_size`` (the scheduler's first estimate of the cost of an image)."""
        crop = self.geometry.crop
        sizes = [1, batch_size]
        if self.choice.compile:
            sizes = sorted({min(2 ** i, batch_size) for i in range(batch_size.bit_length() + 1)})
        start = time.perf_counter()
        for size in sizes:
            self.forward(np.zeros((size, crop, crop, 3), np.uint8))
        if self.choice.compile:
            self.buckets = sizes
            logger.info("compiled for batch sizes %s in %.1f s", sizes,
                        time.perf_counter() - start)
        start = time.perf_counter()
        self.forward(np.zeros((batch_size, crop, crop, 3), np.uint8))
        return (time.perf_counter() - start) * 1000.0 / batch_size
