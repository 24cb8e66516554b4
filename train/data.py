"""Channels in torchvision's ImageFolder layout, their transforms and DataLoaders.

Each channel (``train``, ``valid``, optional ``test``) holds ``NNN.Class_name/*.jpg`` folders;
hidden folders, ``__MACOSX`` and folders without photos are skipped with a warning, not classes
(train/layout.py, the rule the host tools share).
All channels use the train channel's class-to-index map, so a class missing from ``valid`` does
not shift the labels; a class in ``valid`` or ``test`` that ``train`` lacks fails the job.

An unreadable photo (corrupt, truncated, not an image) is skipped, not fatal: it is logged once by
path and counted, and the count reaches the epoch log (``skipped_images``). Grayscale, CMYK,
palette and alpha photos are converted to RGB (alpha composited on white).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data import default_collate
from torchvision import datasets
from torchvision.transforms import v2

from contract import preprocess
from contract.preprocess import IMAGENET_MEAN, IMAGENET_STD, Geometry, to_rgb
from train import layout
from train.errors import TrainingError

logger = logging.getLogger(__name__)

# Truncated JPEGs must fail, not be padded with grey (Pillow's default is strict; keep it so).
ImageFile.LOAD_TRUNCATED_IMAGES = False


readable_label = layout.readable_label  # the manifest's labels; deploy.py reads them too


def load_rgb(path: str, draft: int | None = None) -> Image.Image:
    """Decode ``path`` (its first frame) to an RGB PIL image: EXIF orientation applied, alpha
    composited on white, 16-bit, 32-bit and float images scaled to 8 bits (the contract's
    conversion, serve's too, so that the model trains on what it will be served). With
    ``draft``, a JPEG decodes at the smallest 1/1 to 1/8 scale whose sides stay >= ``draft``
    px, as serve decodes it.

    Raises:
        Exception: anything Pillow raises on an unreadable or malformed file.
    """
    with Image.open(path) as img:
        if draft:
            preprocess.draft(img, draft)
        return to_rgb(img)


@dataclass(frozen=True)
class Preprocess:
    """Image geometry and normalisation shared by training, evaluation and the artifact:
    ``crop`` (model input side, px), ``resize`` (shorter side before the centre crop, px), mean
    and std per RGB channel on the 0-1 scale."""

    crop: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def geometry(self) -> Geometry:
        """The evaluation geometry (contract/preprocess.py) serve runs with these sizes."""
        return Geometry(self.resize, self.crop)

    @classmethod
    def for_size(cls, image_size: int) -> "Preprocess":
        # ImageNet convention: resize to 256/224 of the crop, then centre-crop.
        return cls(crop=image_size, resize=round(image_size * 256 / 224))

    def train_transform(self, min_crop_scale: float) -> v2.Compose:
        """The training augmentation on the PIL image: uint8 [3, crop, crop]. Scaling and
        normalisation (torchvision's ToDtype(scale=True), Normalize) are left to the training
        process, which runs them on its device (contract/tensors.py): DataLoader workers send
        a quarter of float32's bytes, and the GPU does the arithmetic."""
        return v2.Compose([
            v2.PILToTensor(),
            v2.RandomResizedCrop(self.crop, scale=(min_crop_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ])

    def train_draft(self, min_crop_scale: float) -> int:
        """The shorter side (px) a training JPEG may be decoded down to (libjpeg's 1/2, 1/4 or
        1/8 scale: ``contract.preprocess.draft``) with no loss to the augmentation: the
        smallest crop RandomResizedCrop can draw (``min_crop_scale`` of the area, at aspect
        ratio 3/4) still has ``crop`` pixels or more on its shorter side, so it is still
        downscaled, never upscaled, to ``crop``."""
        return math.ceil(self.crop / math.sqrt(min_crop_scale * 3 / 4))

    def eval_transform(self) -> v2.Compose:
        """Resize and centre crop on the PIL image (Pillow's antialiased bilinear resize, which
        serve's Pillow-only preprocessing repeats), then scale and normalise: float32
        [3, crop, crop]."""
        return v2.Compose([
            v2.Resize(self.resize),
            v2.CenterCrop(self.crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])


class ChannelDataset(datasets.DatasetFolder):
    """An ImageFolder over one channel with a fixed class-to-index map and skip-on-error loading.

    ``__getitem__`` returns ``(image, label int)``, the image as its transform makes it (train:
    uint8 [3, crop, crop]; evaluation: float32 [3, crop, crop], normalised), or ``None`` for an
    unreadable photo (``skip_collate`` drops it and counts it).
    """

    def __init__(self, root: str, class_to_idx: dict[str, int], transform, max_per_class: int,
                 seed: int, draft: int | None = None):
        self._fixed = class_to_idx
        super().__init__(root, loader=functools.partial(load_rgb, draft=draft),
                         is_valid_file=layout.is_photo, transform=transform, allow_empty=True)
        if max_per_class:
            by_class = defaultdict(list)
            for sample in self.samples:
                by_class[sample[1]].append(sample)
            rng = random.Random(seed)
            kept = []
            for label in sorted(by_class):
                items = by_class[label]
                rng.shuffle(items)
                kept.extend(sorted(items[:max_per_class]))
            self.samples = kept
            self.targets = [s[1] for s in kept]
            self.imgs = self.samples

    def find_classes(self, directory: str):
        return sorted(self._fixed, key=self._fixed.get), dict(self._fixed)

    def __getitem__(self, key):
        """``key``: an index, or ``(index, seed)`` from an EpochSampler: the transform's random
        choices then come from a generator seeded with ``seed`` alone, so a photo's
        augmentation in an epoch is the same whichever worker loads it and whether the epoch
        ran whole or was resumed half way."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as exc:  # noqa: BLE001 - one bad photo never ends a job
            # Pillow raises more than OSError on malformed files: TypeError, struct.error or
            # ZeroDivisionError from bad EXIF, for one.
            logger.warning("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
            return None
        if seed is None:
            return self.transform(image), label
        # fork_rng: the process's own generator (the model's dropout when workers=0) is left
        # as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def skip_collate(batch):
    """Collate ``(image, label)`` pairs, dropping ``None`` (unreadable photos).

    Returns:
        ``(images [N, 3, H, W] (uint8 for train, float32 for evaluation), labels int64 [N],
        skipped int)``; N may be 0.
    """
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = default_collate(good)
    return images, labels, skipped


def discover_classes(channels: dict[str, str]) -> list[str]:
    """The class folder names of the ``train`` channel, checked against ``valid`` and ``test``.

    A class folder follows train/layout.py's rule: hidden folders, ``__MACOSX`` and folders with
    no photos are not classes; each channel's skipped folders are named in one warning line.

    Args:
        channels: channel name -> local folder (the toolkit's ``channel_input_dirs``).

    Raises:
        TrainingError: a missing or empty channel, one with no photos in any class folder, or a
            class in valid/test that train lacks.
    """
    for required in ("train", "valid"):
        if required not in channels:
            raise TrainingError(
                f"channel {required!r} is missing; give the job channels train and valid "
                f"(test optional), each in ImageFolder layout NNN.Class_name/*.jpg"
            )
    classes: list[str] = []
    for name in ("train", "valid", "test"):
        if name not in channels:
            continue
        root = Path(channels[name])
        if not root.is_dir() or not any(root.iterdir()):
            raise TrainingError(f"channel {name!r} at {root} is empty")
        found = layout.class_folders(root)
        folders = found.classes
        if not folders and found.skipped:
            raise TrainingError(
                f"channel {name!r} has no image files ({', '.join(layout.IMAGE_EXTENSIONS)}) in "
                f"a class folder at {root}; its folders: {found.describe()}"
            )
        if not folders:
            raise TrainingError(
                f"channel {name!r} at {root} has no class folders; expected NNN.Class_name/*.jpg"
            )
        if found.skipped:
            logger.warning("channel %s: %s", name, found.warning())
        if name == "train":
            classes = folders
            continue
        extra = sorted(set(folders) - set(classes))
        if extra:
            raise TrainingError(
                f"channel {name!r} has classes that train lacks: {', '.join(extra[:5])}"
                + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            )
        missing = sorted(set(classes) - set(folders))
        if missing:
            logger.warning("channel %s lacks %d of train's classes (e.g. %s)", name, len(missing),
                           missing[0])
    if len(classes) < 2:
        raise TrainingError(f"the train channel has {len(classes)} class folder; need at least 2")
    return classes


def build_datasets(channels: dict[str, str], classes: list[str], pre: Preprocess,
                   min_crop_scale: float, max_per_class: int, seed: int
                   ) -> dict[str, ChannelDataset]:
    """One ChannelDataset per channel present (train gets the random augmentation).

    Raises:
        TrainingError: a channel with no image files at all.
    """
    class_to_idx = {c: i for i, c in enumerate(classes)}
    out = {}
    for name in ("train", "valid", "test"):
        if name not in channels:
            continue
        train = name == "train"
        transform = pre.train_transform(min_crop_scale) if train else pre.eval_transform()
        # Evaluation decodes JPEGs as serve does (reduced scale when that covers the resize),
        # so the valid and test accuracies are the served model's; training at the scale its
        # smallest crop still covers.
        ds = ChannelDataset(channels[name], class_to_idx, transform, max_per_class, seed,
                            draft=pre.train_draft(min_crop_scale) if train else pre.resize)
        if len(ds) == 0:
            raise TrainingError(
                f"channel {name!r} has no image files ({', '.join(layout.IMAGE_EXTENSIONS)})"
            )
        out[name] = ds
    return out


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one photo's augmentation in one epoch: a 63-bit hash of the three."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """One process's share of a channel for one epoch, in order, from a given position.

    Our own sampler rather than DistributedSampler or torchdata's StatefulDataLoader: a stopped
    job resumes at the exact sample where it stopped (``set_epoch(epoch, start)``), with any
    number of DataLoader workers, because each item carries the seed of its augmentation
    (``sample_seed``); StatefulDataLoader restores worker RNG states only for the same worker
    count, and DistributedSampler starts every epoch from the beginning.

    The order is a permutation seeded by (seed, epoch) when ``shuffle``, else the channel's
    order. With ``world_size`` processes the channel is padded to a multiple of ``world_size``
    with its first samples and rank r takes every ``world_size``-th one (DistributedSampler's
    rule), so every rank runs the same number of steps.

    Yields ``(index, seed)`` pairs (``seed`` None when ``augment`` is False).
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 augment: bool = False) -> None:
        self.size, self.shuffle, self.seed, self.augment = size, shuffle, seed, augment
        self.rank, self.world_size = rank, world_size
        self.share = -(-size // world_size)  # samples per rank, padding included
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from position ``start`` of this rank's share (0: the beginning)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(self.share - self.start, 0)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        padded = self.share * self.world_size
        order = (order * -(-padded // max(self.size, 1)))[:padded]
        mine = order[self.rank::self.world_size][self.start:]
        for index in mine:
            yield index, (sample_seed(self.seed, self.epoch, index) if self.augment else None)


# 32 workers decode about 12,000 photos/s, more than one GPU trains ResNet50 on; beyond that a
# worker (a process with its prefetched batches) costs memory and buys nothing.
MAX_GPU_WORKERS = 32


def default_num_workers(cuda: bool, processes_per_host: int = 1) -> int:
    """DataLoader workers per training process when ``num-workers`` is -1. Decoding and
    augmenting is the per-photo work of a step (about 2.5 ms per photo per core for ResNet50's
    224 px crops), so a GPU needs every core it can get: the host's vCPUs shared among its
    ``processes_per_host`` training processes, less one core for each process itself (which
    launches the GPU's work), at most ``MAX_GPU_WORKERS``. On a CPU the training process
    computes on the same cores: one worker per vCPU, at most 8."""
    cpus = len(os.sched_getaffinity(0))
    if cuda:
        return max(1, min(MAX_GPU_WORKERS, cpus // max(processes_per_host, 1) - 1))
    return max(1, min(8, cpus))


def make_loader(ds: Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    """A DataLoader with skip_collate over an EpochSampler (shuffled and augmented for train;
    sharded across ``world_size`` ranks)."""
    sampler = EpochSampler(len(ds), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                           augment=train)
    # The workers' own seeds no longer matter (EpochSampler seeds each photo); a generator of
    # its own keeps the DataLoader from drawing them from the process's generator.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=skip_collate,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
