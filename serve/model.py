"""The model artifact that `train` wrote: manifest.json plus a torch.export program.

serve reads the files, never train's code (format_version 1; see train/artifact.py for the
writer). Loading happens in each gunicorn worker after the fork, because CUDA does not survive a
fork; each worker may be pinned to its own GPU. Only the scheduler's model thread calls
``forward``: all torch work of a worker runs on that one thread.
"""

from __future__ import annotations

import json
import importlib
import logging
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
                 choice: Choice = Choice("fp32", False, "default")):
        self.manifest = read_manifest(model_dir)
        pre = self.manifest["preprocess"]
        self.geometry = Geometry(int(pre["resize"]), int(pre["crop"]))
        self.classes: list[str] = self.manifest["classes"]
        self.version: str = self.manifest["model_version"]
        self.device = device
        self.choice = choice
        program_path = Path(model_dir) / self.manifest["program"]
        if choice.precision == "int8":
            program_path = Path(model_dir) / self._int8_program(device)
        try:
            program = torch.export.load(str(program_path))
        except Exception as exc:  # torch raises several types for a bad archive
            raise ArtifactError(f"cannot load {program_path}: {exc}") from exc
        # channels_last: faster convolutions on CUDA and with oneDNN on the CPU.
        self.module = program.module().to(device).to(memory_format=torch.channels_last)
        self.buckets: list[int] = []  # batch sizes compiled for; batches are padded up to one
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
            self.module = torch.compile(self.module, dynamic=False)
        self._autocast = AUTOCAST.get(choice.precision)
        self._mean = torch.tensor(pre["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def _int8_program(self, device: torch.device) -> str:
        """The int8 program's file name, with torchao's int8 lowering registered for it.

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
        return name

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
