#!/usr/bin/env python3
"""What the in-container debugger and profiler rules cost: the same training job with
``debugger-rules=false`` and ``true``, each in its own process (smdebug keeps process-wide
state), alternating, in the same run. Wall time covers the whole job: epochs, evaluation, the
hook's saves, the rule evaluation, the report and the artifact. CPU time (user + system, of the
job and every process it waited for: DataLoader workers, the report's child) is printed beside
it: it moves less than wall time on a shared machine, and it counts work that wall time hides
on an idle core.

    .venv/bin/python benchmarks/bench_rules.py [--arch resnet18] [--images 160] [--epochs 2]
        [--entry loop|container]

``--entry loop`` (the default) times ``train.loop.run`` in a bare interpreter: the strictest
measure, since the rules-on job then also pays for modules that a real job has imported before
training starts (the toolkit imports boto3, which smdebug needs). ``--entry container`` times
the real entry program, ``container/train`` on an /opt/ml tree (tools.opt_ml), as SageMaker runs
it: the toolkit's start-up and the output files count on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import make_folder  # noqa: E402
from tools import opt_ml as local  # noqa: E402

JOB = """
import json, sys
from train import hyperparameters, loop
channels, hp, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
loop.run(loop.Job(channels=channels, hyperparameters=hyperparameters.parse(hp),
                  model_dir=f"{out}/model", output_data_dir=f"{out}/data",
                  checkpoint_dir=f"{out}/ckpt", input_config_dir=f"{out}/config"))
"""


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _command(args: argparse.Namespace, data: Path, out: Path, rules: str) -> list[str]:
    """The job's command line; for ``--entry container`` it also lays out ``out`` as /opt/ml."""
    channels = {c: str(data / c) for c in ("train", "valid")}
    hp = {"arch": args.arch, "pretrained": False, "epochs": args.epochs, "batch-size": 16,
          "debugger-rules": rules}
    if args.entry == "loop":
        return [sys.executable, "-c", JOB, json.dumps(channels), json.dumps(hp), str(out)]
    local.write_job(out, channels, hp)
    return [sys.executable, str(ROOT / "container" / "train")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--entry", choices=("loop", "container"), default="loop")
    args = parser.parse_args()
    times = {"false": [], "true": []}
    cpu = {"false": [], "true": []}
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "data", args.images)
        for i in range(args.repeats):
            # Pairs run back to back, in alternating order, so slow drifts of a shared machine
            # fall on both sides; the ratio is the median of the pairs' ratios.
            pair, pair_cpu = {}, {}
            for rules in (("false", "true") if i % 2 == 0 else ("true", "false")):
                out = Path(tmp) / f"run-{i}-{rules}"
                start = time.perf_counter()
                used = _children_cpu_s()
                subprocess.run(_command(args, Path(tmp) / "data", out, rules), check=True,
                               cwd=ROOT, env=dict(os.environ, SAGEMAKER_BASE_DIR=str(out)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                pair[rules] = time.perf_counter() - start
                pair_cpu[rules] = _children_cpu_s() - used
                times[rules].append(pair[rules])
                cpu[rules].append(pair_cpu[rules])
            ratios.append(pair["true"] / pair["false"])
            cpu_ratios.append(pair_cpu["true"] / pair_cpu["false"])
    off, on = statistics.median(times["false"]), statistics.median(times["true"])
    print(f"{args.arch}, image size 224, {args.images} images x {args.epochs} epochs, "
          f"batch 16, {args.repeats} pairs, entry: {args.entry}")
    print(f"debugger-rules=false: {off:.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times['false'])})")
    print(f"debugger-rules=true:  {on:.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times['true'])})")
    print(f"pair ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"CPU time: false {statistics.median(cpu['false']):.1f} s, true "
          f"{statistics.median(cpu['true']):.1f} s; median pair ratio "
          f"{statistics.median(cpu_ratios):.3f}")
    print(f"overhead ratio (median of pairs): {statistics.median(ratios):.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
