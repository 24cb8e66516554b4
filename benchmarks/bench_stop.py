#!/usr/bin/env python3
"""How long a training job takes to stop on SIGTERM, against SageMaker's 120 s to SIGKILL.

Runs the real entry program (``container/train``) on an /opt/ml tree of the digits set with
``--arch`` (resnet50 by default, 224 px: the real model's size), sends SIGTERM once the job has
trained ``--steps-after`` steps past its first checkpoint, and prints the seconds from the signal
to the process's exit, what the job said the stop itself took (checkpoint and model export),
and both as a share of the 120 s window.

    .venv/bin/python benchmarks/bench_stop.py [--arch resnet50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import datasets, opt_ml as local  # noqa: E402

SIGKILL_AFTER_S = 120.0


def one_stop(data: Path, arch: str, image_size: int) -> tuple[float, float, str]:
    """(seconds from SIGTERM to exit, the stop's own seconds as logged, failure reason)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = local.write_job(Path(tmp) / "ml", {c: data / c for c in ("train", "valid")},
                               {"arch": arch, "epochs": 50, "batch-size": 16,
                                "image-size": image_size, "pretrained": False, "lr": 0.02,
                                "num-workers": 1, "max-images-per-class": 3,
                                "debugger-rules": False})
        log = Path(tmp) / "log"
        proc = subprocess.Popen([sys.executable, str(ROOT / "container" / "train")], cwd=ROOT,
                                env=dict(os.environ, SAGEMAKER_BASE_DIR=str(base),
                                         PYTHONUNBUFFERED="1"),
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        first = base / "checkpoints" / "epoch-0001.pt"
        while not first.exists():
            if proc.poll() is not None:
                raise SystemExit(f"the job ended early:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(1.0)  # inside epoch 2's first step
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        total = time.monotonic() - start
        text = log.read_text()
        took = float(re.search(r"\(the stop took ([\d.]+) s\)", text).group(1))
        return total, took, (base / "output" / "failure").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = datasets.write_digits(Path(tmp) / "digits", image_size=32)
        runs = [one_stop(data, args.arch, args.image_size) for _ in range(args.repeats)]
    totals, tooks = [r[0] for r in runs], [r[1] for r in runs]
    print(f"{args.arch}, {args.image_size} px, batch 16, CPU threads {os.cpu_count()}: "
          f"SIGTERM in epoch 2, {args.repeats} jobs")
    print(f"signal to exit:   median {statistics.median(totals):6.1f} s "
          f"(max {max(totals):.1f}); {max(totals) / SIGKILL_AFTER_S:.2f} of the 120 s window")
    print(f"checkpoint+model: median {statistics.median(tooks):6.1f} s (max {max(tooks):.1f})")
    print(f"failure reason: {runs[-1][2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
