"""What one training process reads: each channel's dataset and DataLoader, the position a pass
starts at, and the passes the post-training work needs.

DataLoader workers are forked once, before the first training step (``start_workers``), and
each split's first pass reads the iterator started then. A DataLoader forks its workers on its
first ``iter()``; forked after training steps have grown this process's heap, every heap page
the next training step writes is copied on write, once, and that step runs about 3x slower
(benchmarks/README.md). ``gc.freeze()`` before the fork is the Python docs' advice for
fork-without-exec (the collector stops writing to the frozen objects' pages); it also stops
every later full collection from walking the hundreds of thousands of objects of torch,
torchvision and the model.
"""

from __future__ import annotations

import atexit
import copy
import functools
import gc

from train import data
from train.distributed import Dist
from train.hyperparameters import Hyperparameters

# start_workers() freezes the objects built before the workers fork (gc.freeze). Objects still
# frozen at exit are never collected, and nanobind (triton's bindings, which torch imports)
# then prints each of its own as a leak: 40 alarming lines per job. Unfreezing is harmless when
# nothing was frozen, so it is registered once, here.
atexit.register(gc.unfreeze)


class Feed:
    """The channels of one training process: ``datasets`` and ``loaders`` by split name (this
    rank's shard of each in DDP), and ``steps_per_epoch`` of the train channel."""

    def __init__(self, channels: dict[str, str], classes: list[str], pre: data.Preprocess,
                 hp: Hyperparameters, d: Dist, pin_memory: bool):
        self.pre, self.hp, self.d, self.pin_memory = pre, hp, d, pin_memory
        self.datasets = data.build_datasets(channels, classes, pre, hp.min_crop_scale,
                                            hp.max_images_per_class, hp.seed)
        workers = (hp.num_workers if hp.num_workers >= 0
                   else data.default_num_workers(pin_memory, d.local_world_size))
        self.loaders = {
            name: data.make_loader(ds, hp.batch_size, name == "train", workers, hp.seed,
                                   d.rank, d.world_size, pin_memory)
            for name, ds in self.datasets.items()
        }
        self.steps_per_epoch = len(self.loaders["train"])
        self.first_pass: dict = {}  # split -> its first epoch's iterator (start_workers)

    def start_workers(self, epoch: int, step: int) -> None:
        """Fork every loader's DataLoader workers now, the train channel's positioned at
        ``epoch``, ``step`` (where the job resumes), freezing the objects built so far first;
        each split's first pass then reads the iterator started here, with the batches it has
        prefetched (the module's docstring says why)."""
        self.set_position("train", epoch, step)
        gc.freeze()  # unfrozen at exit (above)
        for split, loader in self.loaders.items():
            if loader.num_workers > 0:
                self.first_pass[split] = iter(loader)

    def set_position(self, split: str, epoch: int, step: int = 0) -> None:
        """Set ``split``'s loader to iterate ``epoch`` from training step ``step``."""
        self.loaders[split].sampler.set_epoch(epoch, step * self.hp.batch_size)

    def batches(self, split: str, epoch: int = 0, start: int = 0):
        """What a pass over ``split`` iterates: the iterator start_workers() started, the first
        time; then the DataLoader itself, its sampler set to ``epoch`` from step ``start``.
        Each batch: ``(images [N, 3, crop, crop], labels int64 [N], skipped)``, the images
        uint8 for train (the loop normalises them on its device), float32 for the others."""
        first = self.first_pass.pop(split, None)
        if first is not None:
            return first
        self.set_position(split, epoch, start)
        return self.loaders[split]

    def unsharded(self, split: str):
        """A loader over the whole ``split`` (in DDP each rank's own loader holds a shard)."""
        if not self.d.enabled:
            self.set_position(split, 0)
            return self.loaders[split]
        return data.make_loader(self.datasets[split], self.hp.batch_size, False, 0,
                                self.hp.seed, 0, 1, self.pin_memory)

    def calibration_dataset(self) -> data.ChannelDataset:
        """The train channel's photos under the evaluation transform and decoding (no
        augmentation): the images the int8 program's activation ranges are calibrated on."""
        ds = copy.copy(self.datasets["train"])  # the same samples, not a second folder scan
        ds.transform = self.pre.eval_transform()
        ds.loader = functools.partial(data.load_rgb, draft=self.pre.resize)
        return ds

    def train_photos(self) -> list[str]:
        """The paths of the train channel's photos (this process's whole channel)."""
        return [path for path, _ in self.datasets["train"].samples]
