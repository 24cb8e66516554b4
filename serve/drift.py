"""Drift of what an endpoint sees against what its model was trained and validated on.

The training job writes a baseline into the manifest (train/export/baseline.py): distributions of
the predicted class and of the top-1 confidence on the valid channel, and of three image statistics
of the training photos (brightness of the model's input, aspect ratio, megapixels), each with
its bin edges. A worker keeps the same statistics of its last ``window`` images and scores each
distribution against the baseline's with the population stability index (PSI) and the
Jensen-Shannon distance (base 2, 0 to 1).

PSI's conventional reading (Siddiqi, "Credit Risk Scorecards", 2006): below 0.1 no shift, 0.1
to 0.25 a moderate one, above 0.25 a significant one; ``PSI_ALERT`` is that last threshold.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

PSI_ALERT = 0.25
EPSILON = 1e-4  # floor for empty bins: PSI and JS are undefined on a zero share
STATISTICS = ("predicted_class", "confidence", "brightness", "aspect_ratio", "megapixels")
# Each statistic's name in the metrics' names (DriftPSIAspectRatio): what deploy.py's alarms and
# dashboard read (tools/monitoring.py).
METRIC_NAMES = {name: "".join(part.title() for part in name.split("_")) for name in STATISTICS}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` against ``expected`` (bin shares or counts)."""
    e = np.maximum(np.asarray(expected, float) / max(np.sum(expected), 1e-12), EPSILON)
    a = np.maximum(np.asarray(actual, float) / max(np.sum(actual), 1e-12), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 identical, 1 disjoint) of two histograms."""
    p = np.asarray(p, float) / max(np.sum(p), 1e-12)
    q = np.asarray(q, float) / max(np.sum(q), 1e-12)
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return math.sqrt(max((kl(p, m) + kl(q, m)) / 2, 0.0))


@dataclass(frozen=True)
class Histogram:
    """A baseline distribution: bin ``shares`` summing to 1, over bins given by ``edges``, or,
    for the predicted class, by ``groups`` (each class's bin)."""

    edges: np.ndarray | None
    shares: np.ndarray
    groups: np.ndarray | None = None

    def counts_of(self, values: np.ndarray) -> np.ndarray:
        """``values`` counted into this histogram's bins (values past the ends in the end bins;
        classes the groups do not know are left out)."""
        if self.groups is not None:
            classes = values.astype(np.int64)
            known = (classes >= 0) & (classes < len(self.groups))
            return np.bincount(self.groups[classes[known]], minlength=len(self.shares))
        inner = self.edges[1:-1]
        return np.bincount(np.searchsorted(inner, values, side="right"),
                           minlength=len(self.shares))


def load_baseline(manifest: dict) -> dict[str, Histogram] | None:
    """The manifest's ``baseline`` as histograms, or None when it has none or it is malformed."""
    raw = manifest.get("baseline")
    if not isinstance(raw, dict):
        return None
    out = {}
    try:
        for name in STATISTICS:
            entry = raw[name]
            shares = np.asarray(entry["shares"], float)
            edges = None if entry.get("edges") is None else np.asarray(entry["edges"], float)
            groups = None if entry.get("groups") is None else np.asarray(entry["groups"], np.int64)
            if shares.ndim != 1 or not len(shares) or not np.isfinite(shares).all() or \
                    shares.sum() <= 0 or (edges is None) == (groups is None) or \
                    (edges is not None and len(edges) != len(shares) + 1) or \
                    (groups is not None and (groups.min() < 0 or groups.max() >= len(shares))):
                return None
            out[name] = Histogram(edges, shares / shares.sum(), groups)
    except (KeyError, TypeError, ValueError):
        return None
    return out


class DriftWindow:
    """The last ``size`` images a worker classified, scored against the baseline. Thread-safe
    (request threads add, the metrics thread scores)."""

    def __init__(self, baseline: dict[str, Histogram], size: int = 1000, min_images: int = 100):
        self.baseline, self.size, self.min_images = baseline, size, min_images
        self._rows: deque = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, predicted_class: int, confidence: float, brightness: float,
            aspect_ratio: float, megapixels: float) -> None:
        """One classified image: its top-1 class and probability, its model input's mean
        brightness (0-255), and the original's width/height and megapixels."""
        with self._lock:
            self._rows.append((predicted_class, confidence, brightness, aspect_ratio, megapixels))

    def scores(self) -> dict[str, float]:
        """``{"DriftPSI<Statistic>": ..., "DriftJS<Statistic>": ...}`` (``METRIC_NAMES``) once
        the window holds ``min_images`` images, else {}."""
        with self._lock:
            rows = np.asarray(self._rows, float)
        if len(rows) < self.min_images:
            return {}
        out = {}
        for i, name in enumerate(STATISTICS):
            histogram = self.baseline[name]
            counts = histogram.counts_of(rows[:, i])
            key = METRIC_NAMES[name]
            out[f"DriftPSI{key}"] = psi(histogram.shares, counts)
            out[f"DriftJS{key}"] = js_distance(histogram.shares, counts)
        return out
