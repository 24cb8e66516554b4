"""The job's reports in /opt/ml/output/data (SageMaker tars the folder into output.tar.gz):
``metrics.json`` (per-epoch history, test accuracy, top-5, per-class accuracy, confusion matrix)
and PNG plots (learning curves, confusion matrix)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRICS_JSON = "metrics.json"
CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
# Up to this many classes metrics.json holds the dense confusion matrix (dogImages: 133); above,
# only its non-zero cells: a dense 10,000-class matrix is 800 MB of int64 before it is JSON.
DENSE_MAX_CLASSES = 200
# Up to this many classes the row-normalised matrix is drawn (8 MB of floats at 1,000).
PLOT_MAX_CLASSES = 1000
MOST_CONFUSED = 20


@dataclass
class Confusion:
    """A confusion matrix kept sparse: its non-zero cells ``true`` (row), ``pred`` (column) and
    ``count``, int64 [K] each, K at most the number of images evaluated, for
    ``num_classes`` classes. Memory grows with the images, not with classes squared."""

    num_classes: int
    true: np.ndarray
    pred: np.ndarray
    count: np.ndarray

    @classmethod
    def from_pairs(cls, true: np.ndarray, pred: np.ndarray, num_classes: int) -> "Confusion":
        """From one (true, predicted) class index pair per image (int arrays [N])."""
        keys = np.asarray(true, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
        cells, counts = np.unique(keys, return_counts=True)
        return cls(num_classes, cells // num_classes, cells % num_classes,
                   counts.astype(np.int64))

    def dense(self) -> np.ndarray:
        """int64 [C, C], rows true, columns predicted (for small C only)."""
        out = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        out[self.true, self.pred] = self.count
        return out

    def per_class(self) -> tuple[np.ndarray, np.ndarray]:
        """(correct, total) per true class, int64 [C] each."""
        total = np.bincount(self.true, weights=self.count, minlength=self.num_classes)
        hit = self.true == self.pred
        correct = np.bincount(self.true[hit], weights=self.count[hit], minlength=self.num_classes)
        return correct.astype(np.int64), total.astype(np.int64)

    def most_confused(self, n: int = MOST_CONFUSED) -> list[tuple[int, int, int]]:
        """The ``n`` largest off-diagonal cells as (true, pred, count), largest first."""
        off = np.flatnonzero(self.true != self.pred)
        top = off[np.argsort(-self.count[off], kind="stable")[:n]]
        return [(int(self.true[i]), int(self.pred[i]), int(self.count[i])) for i in top]


def per_class_accuracy(confusion: Confusion, classes: list[str]) -> dict[str, float | None]:
    """Accuracy of each class; None for a class with no images."""
    correct, total = confusion.per_class()
    return {c: (float(correct[i] / total[i]) if total[i] else None)
            for i, c in enumerate(classes)}


def write(output_dir: Path, history: list[dict], final: dict, classes: list[str],
          confusion: Confusion | None, split: str) -> list[Path]:
    """Write metrics.json and the plots; returns the paths written.

    Args:
        history: one dict of metric values per epoch.
        final: the final evaluation's metrics (test_accuracy, ... or valid_*).
        confusion: the final evaluation's confusion matrix on ``split`` (None: none made).
    """
    # matplotlib's object API, not pyplot: no global figure state, no GUI backend to choose, and
    # a third less import time (matplotlib's "Embed in a web application server" advice).
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    doc = {"history": history, "final": final, "classes": classes, "evaluated_on": split}
    if confusion is not None:
        doc["per_class_accuracy"] = per_class_accuracy(confusion, classes)
        doc["most_confused"] = [{"true": classes[t], "predicted": classes[p], "count": n}
                                for t, p, n in confusion.most_confused()]
        if len(classes) <= DENSE_MAX_CLASSES:
            doc["confusion_matrix"] = confusion.dense().tolist()
        else:
            doc["confusion_cells"] = {"true": confusion.true.tolist(),
                                      "predicted": confusion.pred.tolist(),
                                      "count": confusion.count.tolist()}
    paths = [output_dir / METRICS_JSON]
    paths[0].write_text(json.dumps(doc, indent=2))

    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key in ("train_loss", "valid_loss"):
        ax_loss.plot(epochs, [h[key] for h in history], marker="o", label=key)
    for key in ("train_accuracy", "valid_accuracy"):
        ax_acc.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(output_dir / CURVES_PNG, dpi=100)
    paths.append(output_dir / CURVES_PNG)

    if confusion is not None and len(classes) <= PLOT_MAX_CLASSES:
        size = min(16, 4 + len(classes) * 0.1)
        fig = Figure(figsize=(size, size))
        ax = fig.subplots()
        matrix = confusion.dense()
        rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split}, row-normalised)")
        if len(classes) <= 30:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / CONFUSION_PNG, dpi=100)
        paths.append(output_dir / CONFUSION_PNG)
    return paths
