"""The drift baseline a training job writes into the model's manifest (``baseline``), for the
endpoint to compare what it sees against (serve/drift.py).

Five distributions, each with its bins:
- ``predicted_class``: the model's top-1 class on the valid channel, in at most
  ``MAX_CLASS_GROUPS`` groups of consecutive classes (``groups`` maps a class to its group: with
  133 classes and a window of 1,000 requests, per-class shares are mostly sampling noise);
- ``confidence``: the top-1 probability on the valid channel, 10 bins over 0-1;
- ``brightness``: the mean (0-255) of the model's input, the photo after serve's resize and
  centre crop;
- ``aspect_ratio``: the original photo's width / height;
- ``megapixels``: the original photo's size.
The last three come from up to ``IMAGE_SAMPLE`` training photos, decoded as serve decodes them
(contract/preprocess.py).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

from contract import preprocess
from contract.preprocess import Geometry
from train import stop_signal

MAX_CLASS_GROUPS = 10
IMAGE_SAMPLE = 1000
CONFIDENCE_EDGES = [i / 10 for i in range(11)]
BRIGHTNESS_EDGES = [i * 16.0 for i in range(16)] + [256.0]
ASPECT_RATIO_EDGES = [0.0, 0.5, 0.67, 0.8, 0.9, 1.0, 1.12, 1.25, 1.5, 2.0, 1000.0]
MEGAPIXEL_EDGES = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1000.0]


def _shares(values: np.ndarray, edges: list[float]) -> list[float]:
    counts = np.bincount(np.searchsorted(np.asarray(edges[1:-1]), values, side="right"),
                         minlength=len(edges) - 1)
    return (counts / max(counts.sum(), 1)).tolist()


def class_groups(num_classes: int) -> list[int]:
    """Each class's group: at most MAX_CLASS_GROUPS runs of consecutive classes."""
    groups = min(num_classes, MAX_CLASS_GROUPS)
    return [i * groups // num_classes for i in range(num_classes)]


def image_statistics(paths: list[str], geometry: Geometry, seed: int = 0) -> np.ndarray:
    """float [N, 3]: brightness, aspect ratio and megapixels of up to IMAGE_SAMPLE photos of
    ``paths`` (a seeded sample; unreadable ones left out).

    Raises:
        train.stop_signal.StopRequested: a stop was requested (checked before each photo).
    """
    rng = random.Random(seed)
    sample = rng.sample(paths, min(len(paths), IMAGE_SAMPLE))
    rows = []
    for path in stop_signal.checked(sample):
        try:
            with open(path, "rb") as f:
                body = f.read()
            with Image.open(io.BytesIO(body)) as img:
                width, height = img.size
                turn = preprocess.orientation(img, body)
                preprocess.draft(img, geometry.resize)
                pixels = preprocess.model_input(img, geometry, turn)
        except Exception:  # noqa: BLE001 - Pillow raises many types for a bad file: left out
            continue
        rows.append((float(pixels.mean()), width / height, width * height / 1e6))
    return np.asarray(rows, float).reshape(-1, 3)


def valid_outputs(program_path, batches, device) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class (int [N]) and probability (float [N]) of the exported program at
    ``program_path`` on ``batches`` (train.data's ``(images, labels, skipped)``), fp32."""
    import torch

    module = torch.export.load(str(program_path)).module().to(device)
    predictions, confidences = [], []
    with torch.inference_mode():
        for images, _, _ in batches:
            if images.numel() == 0:
                continue
            probabilities = torch.softmax(module(images.to(device)).float(), dim=1)
            top = probabilities.max(1)
            predictions.append(top.indices.cpu())
            confidences.append(top.values.cpu())
    if not predictions:
        return np.zeros(0, np.int64), np.zeros(0)
    return torch.cat(predictions).numpy(), torch.cat(confidences).numpy()


def compute(predictions: np.ndarray, confidences: np.ndarray, num_classes: int,
            train_paths: list[str], geometry: Geometry, seed: int = 0) -> dict:
    """The manifest's ``baseline`` from the valid channel's top-1 ``predictions`` (int [N]) and
    ``confidences`` (float [N]) and the training photos at ``train_paths``."""
    groups = class_groups(num_classes)
    grouped = np.asarray(groups)[np.asarray(predictions, np.int64)]
    group_counts = np.bincount(grouped, minlength=max(groups) + 1)
    stats = image_statistics(train_paths, geometry, seed)
    return {
        "evaluated_on": "valid",
        "images": int(len(predictions)),
        "training_photos_sampled": int(len(stats)),
        "predicted_class": {"edges": None, "groups": groups,
                            "shares": (group_counts / max(group_counts.sum(), 1)).tolist()},
        "confidence": {"edges": CONFIDENCE_EDGES,
                       "shares": _shares(np.asarray(confidences, float), CONFIDENCE_EDGES)},
        "brightness": {"edges": BRIGHTNESS_EDGES, "shares": _shares(stats[:, 0], BRIGHTNESS_EDGES)},
        "aspect_ratio": {"edges": ASPECT_RATIO_EDGES,
                         "shares": _shares(stats[:, 1], ASPECT_RATIO_EDGES)},
        "megapixels": {"edges": MEGAPIXEL_EDGES, "shares": _shares(stats[:, 2], MEGAPIXEL_EDGES)},
    }
