"""The model artifact that `train` wrote, loaded on one device: manifest.json plus a
torch.export program.

serve reads the files, never train's code: the format, the manifest's checks and the precisions
are the contract's (contract/artifact.py, contract/precisions.py; train/export/artifact.py writes
them).
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
from serve.settings_table import compile_cache_dir
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


def own_program(manifest: dict, precision_name: str, device: torch.device
                ) -> tuple[str, str | None, str]:
    """The file name of ``precision_name``'s own program (int8's), its sha256 (when the
    manifest records one) and that field's name, with what the program needs to load and
    run fast registered (for int8, torchao's int8 ops and inductor's oneDNN lowering:
    without it the compiled program runs the reference decomposition, slower than fp32).

    Raises:
        ArtifactError: a device the precision does not run on, or the artifact has no such
            program.
    """
    precision = precisions.get(precision_name)
    name = precisions.program_of(manifest.get("precisions"), precision.name)
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
    sha = manifest["precisions"][precision.name].get("program_sha256")
    return (name, sha if isinstance(sha, str) else None,
            f"precisions.{precision.name}.program_sha256")


class Classifier:
    """A loaded artifact on one device: ``forward`` turns a batch of decoded images into class
    probabilities. Not thread-safe by design: the scheduler's model thread is its only caller
    (on the CPU each thread that calls torch gets its own OpenMP team, and a team that just
    finished spin-waits on the cores the busy one needs)."""

    def __init__(self, model_dir: Path, device: torch.device,
                 choice: Choice = Choice("fp32", False, "default"), manifest: dict | None = None,
                 eager_precision: str | None = None):
        """Load the artifact for ``choice`` on ``device``: the files are checked against their
        sha256 first, and the program's output against the classes.

        Args:
            choice: the precision and mode to serve in once ready (the target).
            manifest: the artifact's manifest, validated (``read_manifest``); read when None.
            eager_precision: what runs uncompiled while a compiled ``choice`` is not ready, or
                after its compile failed: fp32 or an autocast precision, never one that is fast
                only compiled (int8); when None, ``choice.precision``, or fp32 for int8.

        Raises:
            ArtifactError: a missing or altered program, one torch cannot load, one whose
                output is not one logit per class, or a precision the artifact or device lacks.
        """
        self.manifest = manifest if manifest is not None else read_manifest(model_dir)
        pre = self.manifest["preprocess"]
        self.geometry = Geometry(int(pre["resize"]), int(pre["crop"]))
        self.classes: list[str] = self.manifest["classes"]
        self.version: str = self.manifest["model_version"]
        self.model_dir = Path(model_dir)
        self.device = device
        self.choice = choice
        self.eager_precision = eager_precision or (
            "fp32" if precisions.get(choice.precision).compiled_only else choice.precision)
        if precisions.get(self.eager_precision).compiled_only:
            raise ValueError(f"{self.eager_precision} is never served uncompiled "
                             "(contract/precisions.py)")
        # The eager path runs the fp32 program (under autocast); a compiled precision with a
        # program of its own (int8) is compiled from that program, never run uncompiled.
        self.program_path = self.model_dir / self.manifest["program"]
        check_program(self.program_path, self.manifest["program_sha256"], "program_sha256")
        if choice.compile and precisions.get(choice.precision).program is not None:
            name, sha, sha_field = own_program(self.manifest, choice.precision, device)
            self.target_program = self.model_dir / name
            check_program(self.target_program, sha, sha_field)
            self.target_sha256 = sha or file_sha256(self.target_program)
        else:
            self.target_program = self.program_path
            self.target_sha256 = self.manifest["program_sha256"] or file_sha256(
                self.program_path)
        self._autocast = precisions.autocast_dtype(self.eager_precision)
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
        self.costs: dict[int, float] = {}  # batch size -> ms per forward, as it runs now
        self.sizes: list[int] = []  # the compiled sizes wanted (set by warm_up)
        self.entry: compiled.Entry | None = None
        self.plan: buckets.Plan | None = None  # set by warm_up
        self._max_batch = 1
        self._in_use = None  # the store entry's in-use lock, held while this worker lives
        # Uncompiled chunks run, by the compiled size that would have run them (the order
        # the helpers compile in); the keys are set once by warm_up, so reading is thread-safe.
        self.demand: dict[int, int] = {}

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

    def use_eager(self, reason: str) -> None:
        """Serve the program uncompiled from now on (no compiled program: ``reason``), in the
        eager precision."""
        self.compiled, self.plan, self.costs, self.sizes = {}, None, {}, []
        self.choice = Choice(self.eager_precision, False,
                             f"{self.eager_precision}, eager: no compiled program ({reason})")

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
        if self.demand:
            for _, _, size in chunks:
                if size not in self.compiled:
                    self.demand[buckets.compiled_size(size, self.sizes)] += 1
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
                            if size in self.compiled else self._logits(x[start:stop], stop - start)
                            for start, stop, size in chunks])
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

    def warm_up(self, batch_size: int, store: Path | None = None,
                compile_here: bool = False) -> list[int]:
        """Make the model ready for batches of up to ``batch_size``, time it, and plan how each
        batch runs (serve/buckets.py). Returns the compiled sizes still missing, which the
        caller has built (serve/compiling.py) and hands to ``adopt`` as they are ready.

        Compiled: the programs of the sizes buckets.sizes_to_compile picks, from ``store``
        (default: SERVE_COMPILE_CACHE_DIR) after copying the ones the model carries
        (``compiled/<key>`` in the model dir); a package that does not load is removed, to be
        compiled again. When some are missing, the eager program serves meanwhile, timed at
        sizes 1 and ``batch_size``. Compiled sizes are timed once per host (the times kept with
        the programs), so a respawned worker is ready as soon as it has loaded them.
        ``compile_here``: compile the missing sizes in this process first (a tool, a test, the
        compile step; a worker serves meanwhile instead).

        Raises:
            ArtifactError: the program cannot be loaded or does not give one logit per class.
            compiled.CompileUnavailable: the store is refused (compiled.open_store), or with
                ``compile_here``, a compile failed.
        """
        self._max_batch = batch_size
        if not self.choice.compile:
            _check_output(self)
            self.costs = self._times(sorted({1, batch_size}))
            self.plan = buckets.plan(self.costs, batch_size)
            logger.info("%s", self.plan.describe())
            return []
        self.sizes = buckets.sizes_to_compile(batch_size)
        store = compiled.open_store(store or Path(compile_cache_dir()))
        host = compiled.host_id(self.device, Host.detect(self.device.type).cpu_flags)
        self.entry = compiled.Entry(store, compiled.key(self.target_sha256,
                                                        self.choice.precision, host))
        self._in_use = self.entry.hold()
        shipped = self.model_dir / compiled.SHIPPED / self.entry.key
        if shipped.is_dir():
            copied = self.entry.import_shipped(shipped, self.sizes)
            logger.info("the model carries compiled programs for this host: batch sizes %s "
                        "copied into the store", copied or "none new")
        loaded = self._load_compiled(self.entry.ready(self.sizes))
        missing = [size for size in self.sizes if size not in loaded]
        if missing and compile_here:
            compiled.compile_sizes(self.entry, missing, compiled.exporter(
                self.target_program, self.choice.precision, self.geometry.crop, self.device))
            loaded += self._load_compiled(missing)
            missing = [size for size in self.sizes if size not in loaded]
            if missing:
                raise compiled.CompileUnavailable(f"batch sizes {missing} do not load after "
                                                  "compiling")
        if not missing:
            _check_output(self)
            saved = compiled.saved_costs(store, self.entry.key, torch.get_num_threads())
            self.costs = (saved if saved is not None and set(saved) == set(self.sizes)
                          else self._times(self.sizes))
            compiled.save_costs(store, self.entry.key, torch.get_num_threads(), self.costs)
        else:
            self.demand = {size: 0 for size in self.sizes}
            _check_output(self)  # through the eager program for the sizes not compiled
            eager = sorted({1, batch_size} - set(loaded))
            self.costs = {**self._times(eager, rounds=1), **self._times(sorted(loaded))}
            logger.info("serving %s uncompiled while batch sizes %s compile (%s compiled)",
                        self.eager_precision, missing, self.choice.precision)
        self.plan = buckets.plan(self.costs, batch_size)
        logger.info("%s", self.plan.describe())
        return missing

    def adopt(self, sizes: list[int]) -> list[int]:
        """Take over the compiled programs of ``sizes`` that are now in the store: load and
        time each, and plan again. Runs on the model thread, between batches. Returns the
        sizes whose package did not load (removed from the store, to be compiled again)."""
        loaded = self._load_compiled(sizes)
        if loaded:
            costs = self._times(sorted(loaded))
            for size in loaded:
                self.costs[size] = costs[size]
            if set(self.compiled) == set(self.sizes):
                # All timed again together: sizes timed as they arrived met different loads
                # (a compile beside them), and the plan compares their costs.
                self.costs = self._times(self.sizes)
                self.demand = {}
                compiled.save_costs(self.entry.store, self.entry.key, torch.get_num_threads(),
                                    self.costs)
            self.plan = buckets.plan(self.costs, self._max_batch)
        return [size for size in sizes if size not in loaded]

    def _load_compiled(self, sizes: list[int]) -> list[int]:
        """Load the packages of ``sizes`` from the store into ``compiled``; one that does not
        load is removed (with a warning), to be compiled again. Returns the sizes loaded."""
        loaded = []
        for size in sizes:
            try:
                program = compiled.load(self.entry.package(size), self.device)
                # A new dict, not an update: /ping reads it from a request thread.
                self.compiled = {**self.compiled, size: program}
                loaded.append(size)
            except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad package
                logger.warning("the compiled program for batch size %d in %s does not load "
                               "(%s); removed, to be compiled again", size, self.entry.path,
                               compiled._one_line(exc))
                self.entry.remove(size)
        return loaded

    def describe(self) -> dict:
        """What runs now, for /ping: the precision, the compiled batch sizes, and while some
        are missing, the eager precision that runs the rest."""
        state = {"precision": self.choice.precision,
                 "compiled_batch_sizes": sorted(self.compiled)}
        missing = [size for size in self.sizes if size not in self.compiled]
        if missing or not self.choice.compile:
            state["eager_precision"] = self.eager_precision
        if missing:
            state["compiling_batch_sizes"] = missing
        return state

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


def _check_output(classifier: Classifier) -> None:
    """One blank image through the program as it will be served: it must give one logit
    per class (more would answer indexes past the class list, fewer would shift every label).

    Raises:
        ArtifactError: another output shape, or the program fails on a valid input.
    """
    crop, path = classifier.geometry.crop, classifier.program_path
    try:
        probabilities = classifier.forward(np.zeros((1, crop, crop, 3), np.uint8))
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the artifact's
        raise ArtifactError(f"{path} fails on a blank {crop}x{crop} image: "
                            f"{type(exc).__name__}: {exc}") from exc
    if probabilities.shape != (1, len(classifier.classes)):
        raise ArtifactError(f"{path} outputs {probabilities.shape[1:]} logits per image; "
                            f"manifest.json lists {len(classifier.classes)} classes")
