"""The model artifact that `train` wrote: manifest.json plus a torch.export program.

serve reads the files, never train's code (format_version 1; see train/artifact.py for the
writer). Loading happens in each gunicorn worker after the fork, because CUDA does not survive a
fork; each worker may be pinned to its own GPU.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
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

    ``predict`` is thread-safe. All torch work (preprocessing and forward) runs on one dedicated
    thread per worker: on the CPU each thread that calls torch gets its own OpenMP thread team,
    and a team that just finished spin-waits on the same cores the busy one needs (measured:
    server p50 1.7x the bare forward while gunicorn's request threads did the preprocessing);
    concurrent forwards in one process only fight over the same cores or GPU anyway.
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
        # channels_last: faster convolutions on CUDA and with oneDNN on the CPU (ResNet50 on 2
        # cores: 113 -> 89 ms per image).
        self.module = self.module.to(memory_format=torch.channels_last)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities float32 [N, num_classes] for a preprocessed float32
        [N, 3, crop, crop] batch (run on the worker's forward thread)."""
        return self._executor.submit(self._forward, batch).result()

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            logits = self.module(batch)
        return torch.softmax(logits.float(), dim=1).cpu()

    def predict(self, bodies: list[bytes]) -> list[Prediction]:
        """Decode, preprocess and classify images in one forward pass.

        Raises:
            serve.decode.BadImage: an image cannot be used (the message names its index when
                there are several).
        """
        return self._executor.submit(self._predict, bodies).result()

    def _predict(self, bodies: list[bytes]) -> list[Prediction]:
        from serve.decode import BadImage

        tensors = []
        for i, body in enumerate(bodies):
            try:
                tensors.append(self.preprocess(body))
            except BadImage as exc:
                raise BadImage(f"image {i}: {exc}" if len(bodies) > 1 else str(exc)) from None
        probabilities = self._forward(torch.stack(tensors))
        return [Prediction(p) for p in probabilities]

    def warm_up(self) -> float:
        """One inference on a blank image; returns its duration in ms."""
        start = time.perf_counter()
        self.forward(torch.zeros(1, 3, self.crop, self.crop))
        return (time.perf_counter() - start) * 1000.0
