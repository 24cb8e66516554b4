"""The job's reports in /opt/ml/output/data (SageMaker tars the folder into output.tar.gz):
``metrics.json`` (per-epoch history, test accuracy, top-5, per-class accuracy, confusion matrix)
and PNG plots (learning curves, confusion matrix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METRICS_JSON = "metrics.json"
CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"


def per_class_accuracy(confusion: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """Accuracy of each class from ``confusion`` (int [C, C], rows true, columns predicted);
    None for a class with no images."""
    totals = confusion.sum(axis=1)
    return {
        c: (float(confusion[i, i] / totals[i]) if totals[i] else None)
        for i, c in enumerate(classes)
    }


def write(output_dir: Path, history: list[dict], final: dict, classes: list[str],
          confusion: np.ndarray | None, split: str) -> list[Path]:
    """Write metrics.json and the plots; returns the paths written.

    Args:
        history: one dict of metric values per epoch.
        final: the final evaluation's metrics (test_accuracy, ... or valid_*).
        confusion: int64 [C, C] of the final evaluation on ``split`` (None: none made).
    """
    # matplotlib's object API, not pyplot: no global figure state, no GUI backend to choose, and
    # a third less import time (matplotlib's "Embed in a web application server" advice).
    from matplotlib.figure import Figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    doc = {"history": history, "final": final, "classes": classes, "evaluated_on": split}
    if confusion is not None:
        doc["per_class_accuracy"] = per_class_accuracy(confusion, classes)
        doc["confusion_matrix"] = confusion.tolist()
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

    if confusion is not None:
        size = min(16, 4 + len(classes) * 0.1)
        fig = Figure(figsize=(size, size))
        ax = fig.subplots()
        rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split}, row-normalised)")
        if len(classes) <= 30:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / CONFUSION_PNG, dpi=100)
        paths.append(output_dir / CONFUSION_PNG)
    return paths
