"""The optional passes after the fp32 artifact is written, and their record in its manifest.

``train.export.artifact.write`` leaves a complete, servable fp32 artifact. Three passes then add
to it, in this order, each followed by an atomic rewrite of the manifest:

- ``int8_calibration``: the int8 program for CPU serving (train/export/quantize.py);
- ``precisions``: the programs' accuracy in each serving precision (train/export/precision.py);
- ``baseline``: the drift baseline (train/export/baseline.py).

The model does not depend on them: a pass that fails is logged and recorded, and the others
still run. A stop (SIGTERM or SIGINT, train/stop_signal.py) ends them: a pass iterates its
batches through ``train.stop_signal.checked``, so the one in progress is abandoned within a batch
of the signal, the rest are not started, and the manifest's ``post_training`` section says so
(``skipped``). For resnet50 on 2 vCPUs the passes take minutes (benchmarks/README.md), more
than the stop watchdog's 100 s; a stop in the job's last minutes must not cost the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from train import stop_signal
from train.checkpoint import failure_cause
from train.export import artifact

logger = logging.getLogger(__name__)

PASSES = ("int8_calibration", "precisions", "baseline")
# What serving goes without when a pass did not run.
WITHOUT = {
    "int8_calibration": "serve will not offer int8",
    "precisions": "serve will use fp32",
    "baseline": "the endpoint will score no drift",
}

# A pass: does its work and returns (manifest sections to add, details for its record entry).
Pass = Callable[[], tuple[dict, dict]]


def plan(to_run: Iterable[str], off: dict[str, str], stopped: str | None) -> dict:
    """The manifest's ``post_training`` section before the passes: ``pending`` for each pass in
    ``to_run``, ``off`` with its reason for those in ``off`` (``{"int8_calibration":
    "int8-calibration-images=0"}``), and ``skipped`` for the rest when ``stopped`` (the reason:
    "stopped by SIGTERM"), else ``off``."""
    to_run = set(to_run)
    record = {}
    for name in PASSES:
        if name in to_run:
            record[name] = {"status": "pending"}
        elif name in off:
            record[name] = {"status": "off", "reason": off[name]}
        elif stopped:
            record[name] = {"status": "skipped", "reason": stopped}
        else:
            record[name] = {"status": "off", "reason": "not asked for"}
    return record


def run(model_dir: Path, record: dict, passes: dict[str, Pass]) -> dict:
    """Run ``passes`` (name -> pass, in ``PASSES`` order) on the artifact in ``model_dir``,
    updating ``record`` (the manifest's ``post_training``, from ``plan``) and rewriting the
    manifest with each pass's sections and the record after each. Returns ``record``.

    Raises:
        TrainingError: the manifest cannot be rewritten (disk full); the previous one stays,
            and with it a complete artifact.
    """
    names = list(passes)
    for i, name in enumerate(names):
        try:
            if stop_signal.requested():
                raise stop_signal.StopRequested(f"stopped by {stop_signal.signal_name()}")
            logger.info("post-training pass %s started", name)
            sections, details = passes[name]()
        except stop_signal.StopRequested as exc:
            for rest in names[i:]:
                record[rest] = {"status": "skipped", "reason": str(exc)}
            logger.warning("%s: post-training passes not run: %s; the model is complete (%s)",
                           exc, ", ".join(names[i:]),
                           "; ".join(WITHOUT[n] for n in names[i:]))
            artifact.update(model_dir, {"post_training": record})
            return record
        except Exception as exc:  # noqa: BLE001 - the model does not depend on the pass
            logger.exception("post-training pass %s failed; %s", name, WITHOUT[name])
            record[name] = {"status": "failed", "reason": failure_cause(exc)}
            sections = {}
        else:
            record[name] = {"status": "done", **details}
        artifact.update(model_dir, {**sections, "post_training": record})
    return record


def skipped(record: dict) -> list[str]:
    """The passes ``record`` (a ``post_training`` section) marks ``skipped``, in order."""
    return [name for name in PASSES if (record.get(name) or {}).get("status") == "skipped"]
