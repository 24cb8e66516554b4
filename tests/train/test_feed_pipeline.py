"""The training input pipeline built for GPU rates, checked on the CPU: uint8 from the
DataLoader workers, normalised by the training process, gives the tensors the float32 pipeline
gave; JPEGs decode at a reduced scale only where the smallest crop still covers the crop size;
the device-side step sums read what per-step reads gave; DDP drops find_unused_parameters once
the backbone trains, with the ranks' weights still equal."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torchvision.transforms import v2

from contract import tensors
from tests.conftest import DOG_PHOTOS
from train import data, hyperparameters, loop
from train.step_sums import StepSums


def _channel(root: Path, photos) -> Path:
    for i, photo in enumerate(photos):
        folder = root / f"{i % 2 + 1:03d}.class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / Path(photo).name)
    return root


def _float32_train_transform(pre: data.Preprocess, min_crop_scale: float) -> v2.Compose:
    """The training transform as it was before the workers sent uint8."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(pre.crop, scale=(min_crop_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre.mean, pre.std),
    ])


def test_uint8_from_the_workers_normalised_by_the_loop_equals_the_float32_pipeline(tmp_path):
    train = _channel(tmp_path / "train", DOG_PHOTOS)
    pre = data.Preprocess.for_size(224)
    ds = data.build_datasets({"train": str(train)}, ["001.class_0", "002.class_1"], pre, 0.25, 0,
                             0)["train"]
    old = _float32_train_transform(pre, 0.25)
    mean, std = tensors.mean_std(pre.mean, pre.std, torch.device("cpu"))
    for index in range(len(ds)):
        for seed in (1, 12345):
            image, label = ds[(index, seed)]
            assert image.dtype == torch.uint8 and image.shape == (3, 224, 224)
            with Image.open(ds.samples[index][0]) as photo:
                rgb = data.to_rgb(photo)  # no draft: every sample photo is under 517 px
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                expected = old(rgb)
            got = tensors.normalise(image[None], mean, std)[0]
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
            # channels_last, as the loop sends it to a GPU: the same values.
            last = tensors.normalise(image[None].contiguous(memory_format=torch.channels_last),
                                     mean, std)
            torch.testing.assert_close(last[0], expected, rtol=0, atol=0)


def test_a_large_jpeg_decodes_at_the_scale_its_smallest_crop_still_covers(tmp_path):
    pre = data.Preprocess.for_size(224)
    size = pre.train_draft(0.25)
    # The smallest crop (a quarter of the area at aspect 3/4) of a size x size image keeps 224.
    assert math.sqrt(size * size * 0.25 * 3 / 4) >= 224 and size == 518
    big = tmp_path / "big.jpg"
    with Image.open(DOG_PHOTOS[0]) as photo:
        photo.convert("RGB").resize((2400, 1800), Image.BICUBIC).save(big, quality=95)
    drafted = data.load_rgb(str(big), draft=size)
    assert drafted.size == (1200, 900)  # libjpeg's 1/2 scale: 1/4 would be 450 px high
    assert data.load_rgb(str(DOG_PHOTOS[0]), draft=size).size == Image.open(DOG_PHOTOS[0]).size
    # A crop of the full decode and the same crop of the drafted one, both resized to 224 as
    # RandomResizedCrop does, are the same picture (resampling differences only), down to the
    # smallest crop the augmentation draws (a quarter of the area at aspect 3/4).
    full = v2.functional.pil_to_tensor(data.load_rgb(str(big))).float()
    half = v2.functional.pil_to_tensor(drafted).float()
    area = 2400 * 1800
    for share, ratio, top, left in ((0.25, 3 / 4, 0.1, 0.2), (0.25, 4 / 3, 0.5, 0.4),
                                    (1.0, 4 / 3, 0.0, 0.0), (0.5, 1.0, 0.3, 0.3)):
        w = round(math.sqrt(area * share * ratio))
        h = round(math.sqrt(area * share / ratio))
        y, x = round(top * (1800 - h)), round(left * (2400 - w))
        a = v2.functional.resized_crop(full, y, x, h, w, [224, 224], antialias=True)
        b = v2.functional.resized_crop(half, y // 2, x // 2, h // 2, w // 2, [224, 224],
                                       antialias=True)
        assert (a - b).abs().mean() < 3.0, (share, ratio)  # of 255


def test_default_workers_share_the_host_s_cores_among_gpu_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert data.default_num_workers(cuda=True) == 15
    assert data.default_num_workers(cuda=True, processes_per_host=8) == 1
    assert data.default_num_workers(cuda=True, processes_per_host=4) == 3
    assert data.default_num_workers(cuda=False) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert data.default_num_workers(cuda=True) == data.MAX_GPU_WORKERS == 32  # ml.g6.16xlarge
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert data.default_num_workers(cuda=True) == 1
    assert data.default_num_workers(cuda=False) == 2


def _step(loss: float, right: int, n: int = 4):
    logits = torch.zeros(n, 3)
    labels = torch.ones(n, dtype=torch.long)
    logits[:right, 1] = 1.0  # the first ``right`` images predicted as class 1
    return torch.tensor(loss), logits, labels


def test_step_sums_read_per_step_on_the_cpu_and_stop_at_the_first_bad_loss():
    sums = StepSums(cuda=False)
    acc = {"loss_sum": 0.0, "correct": 0, "seen": 0}
    sums.add(0, *_step(0.5, 3))
    assert sums.due  # every step on a CPU
    assert sums.read(acc) is None
    assert acc == {"loss_sum": torch.tensor(0.5).item() * 4, "correct": 3, "seen": 4}
    gpu = StepSums(cuda=True)
    for step, loss in enumerate([1.25, 0.75, float("nan"), 2.0]):
        gpu.add(step, *_step(loss, 2))
    assert not gpu.due  # a GPU reads every SYNC_EVERY_CUDA steps
    assert gpu.read(acc) == (2, pytest.approx(float("nan"), nan_ok=True))
    # The steps before the bad one are counted, the bad one and those after it are not.
    assert acc["seen"] == 12 and acc["correct"] == 7
    assert acc["loss_sum"] == pytest.approx(2.0 + 1.25 * 4 + 0.75 * 4)
    assert gpu.read(acc) is None  # nothing left to read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, job: loop.Job, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d = loop.Dist(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = loop.Trainer(job, d)
        wrappers = []
        for epoch in range(2):
            trainer.train_epoch(epoch)
            wrappers.append(trainer.find_unused)
        digest = hashlib.sha256()
        # Parameters only: each rank updates its BatchNorm running statistics from its own
        # batches after DDP's broadcast of rank 0's buffers.
        for name, tensor in sorted(trainer.net.named_parameters()):
            digest.update(name.encode() + tensor.detach().numpy().tobytes())
        conv = trainer.net.conv1.weight.detach().clone()
        torch.save({"digest": digest.hexdigest(), "wrappers": wrappers, "conv1": conv},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.model
def test_ddp_finds_unused_parameters_only_while_frozen_and_the_ranks_stay_equal(tmp_path):
    import torchvision

    photos = [p for p in DOG_PHOTOS] * 2
    channels = {"train": str(_channel(tmp_path / "train", photos)),
                "valid": str(_channel(tmp_path / "valid", DOG_PHOTOS[:2]))}
    weights = tmp_path / "weights"
    weights.mkdir()
    pretrained = torchvision.models.resnet18(weights=None)
    torch.save(pretrained.state_dict(), weights / "resnet18.pth")
    channels["pretrained"] = str(weights)
    hp = hyperparameters.parse({"arch": "resnet18", "epochs": 2, "batch-size": 4,
                                "image-size": 32, "pretrained": True, "freeze-epochs": 1,
                                "num-workers": 0, "debugger-rules": False, "lr": 0.05})
    job = loop.Job(channels=channels, hyperparameters=hp, model_dir=str(tmp_path / "model"),
                   output_data_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "ckpt"),
                   input_config_dir=str(tmp_path / "cfg"))
    mp.start_processes(_ddp_rank, args=(_free_port(), job, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["wrappers"] == ranks[1]["wrappers"] == [True, False]
    # The backbone trained in epoch 2 under the new wrapper, its gradients all-reduced: the
    # ranks (each on its own half of the photos) hold the same weights, and not the old ones.
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert not torch.equal(ranks[0]["conv1"], pretrained.conv1.weight)
