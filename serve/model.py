"""The model artifact that `train` wrote: manifest.json plus a torch.export program.

serve reads the files, never train's code (format_version 1; see train/artifact.py for the
writer). Loading happens in each gunicorn worker after the fork, because CUDA does not survive a
fork; each worker may be pinned to its own GPU.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from serve.decode import Preprocessor

SUPPORTED_FORMAT = "sagemaker-dog-breeds/model"
SUPPORTED_VERSIONS = (1,)


class ArtifactError(RuntimeError):
    """The model dir does not hold a complete artifact this server can load."""


def read_manifest(model_dir: Path) -> dict:
    """Read and check ``model_dir/manifest.json``.

    Raises:
        ArtifactError: missing, not JSON, another format, an unknown format_version, or
            classes that do not match num_classes.
    """
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the model dir holds no complete artifact "
                            f"(train writes manifest.json last)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
    if manifest.get("format") != SUPPORTED_FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r} is not "
                            f"{SUPPORTED_FORMAT!r}")
    if manifest.get("format_version") not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"{path}: format_version {manifest.get('format_version')!r} is not "
                            f"one of {SUPPORTED_VERSIONS}; use a server built for it")
    if len(manifest.get("classes", [])) != manifest.get("num_classes"):
        raise ArtifactError(f"{path}: {len(manifest.get('classes', []))} class names for "
                            f"num_classes={manifest.get('num_classes')}")
    return manifest


@dataclass
class Prediction:
    """One image's result: ``probabilities`` float32 [num_classes] in class order."""

    probabilities: torch.Tensor


class Classifier:
    """A loaded artifact: preprocessing and the network on one device.

    ``predict`` is thread-safe (one forward at a time per worker: concurrent forwards in one
    process only fight over the same cores or GPU).
    """

    def __init__(self, model_dir: Path, device: torch.device, max_pixels: int):
        self.manifest = read_manifest(model_dir)
        pre = self.manifest["preprocess"]
        self.preprocess = Preprocessor(pre["resize"], pre["crop"], pre["mean"], pre["std"],
                                       max_pixels)
        self.classes: list[str] = self.manifest["classes"]
        self.version: str = self.manifest["model_version"]
        self.device = device
        self.crop = int(pre["crop"])
        self.max_batch = int(self.manifest.get("input", {}).get("max_batch", 1024))
        program_path = Path(model_dir) / self.manifest["program"]
        try:
            program = torch.export.load(str(program_path))
        except Exception as exc:  # torch raises several types for a bad archive
            raise ArtifactError(f"cannot load {program_path}: {exc}") from exc
        self.module = program.module().to(device)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities float32 [N, num_classes] for a preprocessed float32
        [N, 3, crop, crop] batch."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._lock:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                logits = self.module(batch)
            return torch.softmax(logits.float(), dim=1).cpu()

    def predict(self, bodies: list[bytes]) -> list[Prediction]:
        """Decode, preprocess and classify images in one forward pass.

        Raises:
            serve.decode.BadImage: an image cannot be used (the message names its index when
                there are several).
        """
        from serve.decode import BadImage

        tensors = []
        for i, body in enumerate(bodies):
            try:
                tensors.append(self.preprocess(body))
            except BadImage as exc:
                raise BadImage(f"image {i}: {exc}" if len(bodies) > 1 else str(exc)) from None
        probabilities = self.forward(torch.stack(tensors))
        return [Prediction(p) for p in probabilities]

    def warm_up(self) -> float:
        """One inference on a blank image; returns its duration in ms."""
        start = time.perf_counter()
        self.forward(torch.zeros(1, 3, self.crop, self.crop))
        return (time.perf_counter() - start) * 1000.0
