#!/usr/bin/env python3
"""Training throughput on this machine's CPU: our real pipeline against the bare model.

For each arch (resnet18, resnet50) at the default image size (224): images/s of one epoch of
train.loop.Trainer over real JPEGs (the sample dog photos, copied into an ImageFolder), decoding
and augmentation included, against the bare forward + backward + SGD step of the same model on
random tensors of the same batch shape, measured in the same run. The ratio shows what data
loading costs (1.0: nothing).

    .venv/bin/python benchmarks/bench_train.py [--images 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import hyperparameters, loop  # noqa: E402

PHOTOS = sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))


def make_folder(root: Path, n_images: int) -> dict[str, str]:
    for split in ("train", "valid"):
        for i in range(n_images if split == "train" else 4):
            folder = root / split / f"{i % 2 + 1:03d}.class_{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(PHOTOS[i % len(PHOTOS)], folder / f"{i:04d}.jpg")
    return {s: str(root / s) for s in ("train", "valid")}


def bare_images_per_second(trainer: loop.Trainer, steps: int, batch_size: int) -> float:
    net, opt, loss_fn = trainer.net, trainer.optimizer, trainer.loss_fn
    net.train()
    size = trainer.pre.crop
    x = torch.randn(batch_size, 3, size, size)
    y = torch.randint(0, 2, (batch_size,))
    loss_fn(net(x), y).backward()  # warm-up
    opt.zero_grad()
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--archs", default="resnet18,resnet50")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image size 224, "
          f"batch {args.batch_size}, {args.images} images per epoch")
    print(f"{'arch':<10} {'pipeline img/s':>15} {'bare img/s':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        channels = make_folder(Path(tmp) / "data", args.images)
        for arch in args.archs.split(","):
            hp = hyperparameters.parse({"arch": arch, "pretrained": False, "epochs": 1,
                                        "batch-size": args.batch_size})
            job = loop.Job(channels=channels, hyperparameters=hp, model_dir=f"{tmp}/model",
                           output_data_dir=f"{tmp}/out", checkpoint_dir=f"{tmp}/ckpt",
                           input_config_dir=f"{tmp}/config")
            trainer = loop.Trainer(job, loop.Dist())
            trainer.train_epoch(0)  # warm-up: DataLoader workers start, allocator settles
            pipeline = trainer.train_epoch(0)["images_per_second"]
            steps = max(1, args.images // args.batch_size)
            bare = bare_images_per_second(trainer, steps, args.batch_size)
            print(f"{arch:<10} {pipeline:>15.1f} {bare:>11.1f} {pipeline / bare:>6.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
