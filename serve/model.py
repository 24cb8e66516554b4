"""The model artifact that `train` wrote, loaded on one device: manifest.json plus a
torch.export program.

serve reads the files, never train's code: the format, the manifest's checks and the precisions
are the contract's (contract/artifact.py, contract/precisions.py; train/artifact.py writes them).
Loading happens in each gunicorn worker after the fork, because CUDA does not survive a fork;
each worker may be pinned to its own GPU. Only the scheduler's model thread calls
``forward``: all torch work of a worker runs on that one thread.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from contract import precisions, tensors
from contract.artifact import ArtifactError, check_program, file_sha256, read_manifest
from contract.preprocess import Geometry
from serve import buckets, compiled
from serve.config import compile_cache_dir
from serve.precision import Choice, Host

logger = logging.getLogger("serve")


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] to the model's input float32 [N, 3, H, W] (channels_last memory):
    scaled to 0-1 and normalised as the training job does (contract/tensors.py). ``mean``,
    ``std``: [1, 3, 1, 1]."""
    # NHWC uint8 viewed as NCHW is channels_last already: no copy for the layout.
    return tensors.normalise(images.permute(0, 3, 1, 2), mean, std)


class _HostBatches:
    """Two host buffers of decoded images that batches are assembled in, used in turn (at most
    two batches are in flight: serve/scheduler.py): pinned memory on a GPU host, so that the
    host-to-device copy is an asynchronous DMA instead of a staged, blocking copy."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, pinned: bool):
        self.shape, self.dtype, self.pinned = shape, dtype, pinned
        self._slots: list[torch.Tensor] = [torch.empty(0), torch.empty(0)]
        self._turn = 0

    def take(self, n: int) -> torch.Tensor:
        """The next buffer, [>= n, *shape]: the one whose batch is two launches old."""
        self._turn ^= 1
        slot = self._slots[self._turn]
        if len(slot) < n:
            slot = torch.empty((n,) + self.shape, dtype=self.dtype, pin_memory=self.pinned)
            self._slots[self._turn] = slot
        return slot


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
        if precisions.get(choice.precision).program is not None:
            name, sha, sha_field = self._own_program(device)
        else:
            name, sha, sha_field = (self.manifest["program"], self.manifest["program_sha256"],
                                    "program_sha256")
        program_path = Path(model_dir) / name
        check_program(program_path, sha, sha_field)
        self.program_path = program_path
        self.program_sha256 = sha or file_sha256(program_path)  # the compiled programs' key
        self._autocast = precisions.autocast_dtype(choice.precision)
        self._mean, self._std = tensors.mean_std(pre["mean"], pre["std"], device)
        self.cuda = device.type == "cuda"
        crop = self.geometry.crop
        self._host = _HostBatches((crop, crop, 3), torch.uint8, pinned=self.cuda)
        self._outputs = _HostBatches((len(self.classes),), torch.float32, pinned=self.cuda)
        # The next batch's pixels are copied on a stream of their own while the model runs the
        # previous one.
        self._copies = torch.cuda.Stream(device) if self.cuda else None
        self._eager: torch.nn.Module | None = None
        self.compiled: dict[int, Callable] = {}  # batch size -> its compiled program
        self.plan: buckets.Plan | None = None  # set by warm_up

    @property
    def eager(self) -> torch.nn.Module:
        """The program uncompiled, loaded on first use: a worker that loads compiled programs
        never needs it, and loading it is seconds of a respawn.

        Raises:
            ArtifactError: torch cannot load the program.
        """
        if self._eager is None:
            try:
                program = torch.export.load(str(self.program_path))
            except Exception as exc:  # torch raises several types for a bad archive
                raise ArtifactError(f"cannot load {self.program_path}: {exc}") from exc
            # channels_last: faster convolutions on CUDA and with oneDNN on the CPU.
            self._eager = program.module().to(self.device).to(memory_format=torch.channels_last)
        return self._eager

    def _check_output(self) -> None:
        """One blank image through the program as it will be served: it must give one logit
        per class (more would answer indexes past the class list, fewer would shift every label).

        Raises:
            ArtifactError: another output shape, or the program fails on a valid input.
        """
        try:
            probabilities = self.forward(np.zeros((1, self.geometry.crop, self.geometry.crop, 3),
                                                  np.uint8))
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is the artifact's
            raise ArtifactError(f"{self.program_path} fails on a blank {self.geometry.crop}x"
                                f"{self.geometry.crop} image: {type(exc).__name__}: {exc}"
                                ) from exc
        if probabilities.shape != (1, len(self.classes)):
            raise ArtifactError(f"{self.program_path} outputs {probabilities.shape[1:]} logits "
                                f"per image; manifest.json lists {len(self.classes)} classes")

    def use_eager(self, reason: str) -> None:
        """Serve the program uncompiled from now on (no compiled program: ``reason``)."""
        self.compiled, self.plan = {}, None
        self.choice = Choice(self.choice.precision, False,
                             f"{self.choice.precision}, eager: no compiled program ({reason})")

    def _own_program(self, device: torch.device) -> tuple[str, str | None, str]:
        """The file name of the chosen precision's own program (int8's), its sha256 (when the
        manifest records one) and that field's name, with what the program needs to load and
        run fast registered (for int8, torchao's int8 ops and inductor's oneDNN lowering:
        without it the compiled program runs the reference decomposition, slower than fp32).

        Raises:
            ArtifactError: a device the precision does not run on, or the artifact has no such
                program.
        """
        precision = precisions.get(self.choice.precision)
        name = precisions.program_of(self.manifest.get("precisions"), precision.name)
        if device.type not in precision.devices:
            others = ["auto"] + [p.name for p in precisions.PRECISIONS
                                 if device.type in p.devices or p.program is None]
            raise ArtifactError(f"{precision.name} runs on {' and '.join(precision.devices)} "
                                f"hosts only: set SERVE_PRECISION to {', '.join(others[:-1])} or "
                                f"{others[-1]} on a {device.type} host")
        if name is None:
            raise ArtifactError(f"this artifact has no {precision.name} program (the manifest's "
                                "post_training section says why: for int8, "
                                "int8-calibration-images=0, a stop or a failure), so "
                                f"SERVE_PRECISION={precision.name} cannot be served")
        if precision.prepare is not None:
            precision.prepare()
        sha = self.manifest["precisions"][precision.name].get("program_sha256")
        return (name, sha if isinstance(sha, str) else None,
                f"precisions.{precision.name}.program_sha256")

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, num_classes] for decoded images uint8
        [N, crop, crop, 3] (serve.decode.to_model_input), scaled to 0-1 and normalised with the
        manifest's mean and std as the training job's evaluation transform does, in the chosen
        precision (autocast, as the training job measured it)."""
        return self.launch([images])()

    @torch.inference_mode()
    def launch(self, parts: list[np.ndarray]) -> Callable[[], np.ndarray]:
        """Start the forward of a batch made of ``parts`` (uint8 [n_i, crop, crop, 3] each) and
        return a function that waits for it and returns the class probabilities, float32
        [sum n_i, num_classes].

        On a GPU this returns as soon as the work is queued: the pixels are gathered into a
        pinned buffer, copied to the device on a stream of their own, and the probabilities
        copied back into pinned memory, so the caller can assemble and launch the next batch
        while this one runs (at most two in flight: the host buffers are used in turn). On the
        CPU the forward runs here, before this returns.
        """
        n = sum(len(part) for part in parts)
        # Compiled programs run one batch size each: the plan's sizes, the last one padded.
        chunks = self.plan.chunks(n) if self.compiled and self.plan else [(0, n, n)]
        padded = chunks[-1][0] + chunks[-1][2]
        host = self._host.take(padded)[:padded]
        pixels = host.numpy()
        np.concatenate(parts, out=pixels[:n])
        pixels[n:] = 0
        if self.cuda:
            with torch.cuda.stream(self._copies):
                x = host.to(self.device, non_blocking=True)
            torch.cuda.current_stream(self.device).wait_stream(self._copies)
            x.record_stream(torch.cuda.current_stream(self.device))  # freed after its use here
        else:
            x = host
        x = normalise(x, self._mean, self._std)
        logits = torch.cat([self._logits(x[start:start + size], size)
                            for start, _, size in chunks])
        probabilities = torch.softmax(logits.float(), dim=1)[:n]
        if not self.cuda:
            result = probabilities.numpy()
            return lambda: result
        out = self._outputs.take(n)[:n]
        out.copy_(probabilities, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))

        def collect() -> np.ndarray:
            done.synchronize()
            return out.numpy().copy()  # the buffer is reused two batches later

        return collect

    def _logits(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """The logits of ``x`` (float32 [size, 3, crop, crop]): its compiled program when there
        is one (the precision compiled into it), else the eager program under autocast."""
        program = self.compiled.get(size)
        if program is not None:
            return program(x)
        with torch.autocast(self.device.type, dtype=self._autocast or torch.float32,
                            enabled=self._autocast is not None):
            return self.eager(x)

    def warm_up(self, batch_size: int, store: Path | None = None) -> float:
        """Make the model ready for batches of up to ``batch_size`` and time it. Compiled: the
        programs of the sizes serve.buckets.sizes_to_compile picks, loaded from ``store``
        (default: SERVE_COMPILE_CACHE_DIR) or compiled into it for this host
        (serve/compiled.py); eager: sizes 1 and ``batch_size``. Each size is timed on blank
        images (compiled: once per host, the times kept with the programs), and ``plan`` then
        says how each batch runs and the largest batch worth forming (serve/buckets.py).
        Returns the planned ms per image at that batch (the scheduler's first estimate of the
        cost of an image).

        Raises:
            ArtifactError: the program cannot be loaded or does not give one logit per class.
            compiled.CompileUnavailable: a compiled program cannot be produced or loaded here.
        """
        costs = None
        if self.choice.compile:
            sizes = buckets.sizes_to_compile(batch_size)
            start = time.perf_counter()
            store = store or Path(compile_cache_dir())
            host = compiled.host_id(self.device, Host.detect(self.device.type).cpu_flags)
            entry = compiled.key(self.program_sha256, self.choice.precision, host)
            self.compiled = compiled.obtain(
                store, entry, sizes, lambda size: compiled.export(
                    self.eager, size, self.geometry.crop, self.device, self._autocast),
                self.device)
            logger.info("compiled programs for batch sizes %s ready in %.1f s", sizes,
                        time.perf_counter() - start)
            costs = compiled.saved_costs(store, entry, torch.get_num_threads())
        else:
            sizes = sorted({1, batch_size})
        self._check_output()
        if costs is None or set(costs) != set(sizes):
            costs = self._times(sizes)
            if self.choice.compile:
                compiled.save_costs(store, entry, torch.get_num_threads(), costs)
        self.plan = buckets.plan(costs, batch_size)
        logger.info("%s", self.plan.describe())
        return self.plan.ms(self.plan.max_batch) / self.plan.max_batch

    @torch.inference_mode()
    def _times(self, sizes: list[int], rounds: int = 3) -> dict[int, float]:
        """The fastest of ``rounds`` forwards (ms) of blank images at each of ``sizes``, after one
        untimed run each (a program's first call allocates); the sizes alternate, so that a slow
        spell of a shared CPU does not fall on one size alone."""
        crop = self.geometry.crop
        blanks = {size: normalise(torch.zeros((size, crop, crop, 3), dtype=torch.uint8,
                                              device=self.device), self._mean, self._std)
                  for size in sizes}
        times: dict[int, float] = {}
        for round_ in range(rounds + 1):
            for size in sizes:
                start = time.perf_counter()
                self._logits(blanks[size], size).float().cpu()  # waits for the device too
                if round_:
                    times[size] = min(times.get(size, float("inf")),
                                      (time.perf_counter() - start) * 1000.0)
        return times
