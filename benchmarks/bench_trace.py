#!/usr/bin/env python3
"""Do training steps run slower after a torch.profiler window? In fresh processes, alternating:
10 timed steps, then 4 steps of which the last 3 are profiled by train.debugger.monitor.TraceWindow
(``trace``) or not (``none``), then 10 more timed steps. Prints each process's after/before
ratio, the median of each kind, and their quotient (the slowdown a trace leaves behind; 1.0 is
none).

    .venv/bin/python benchmarks/bench_trace.py [--repeats 6] [--arch resnet18] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, tempfile, time
import torch, torchvision
from train.debugger.monitor import TraceWindow
mode, arch, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
net = getattr(torchvision.models, arch)(num_classes=2).train()
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    loss = loss_fn(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
def timed(n=10):
    start = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - start
step(); step()
before = timed()
window = TraceWindow(tempfile.mkdtemp() + "/trace.json", start=1, active=3)
for _ in range(4):  # with a window, the last 3 of these steps are profiled
    if mode == "trace":
        window.step_begin()
    step()
window.close()
assert window.written == (mode == "trace")
print(timed() / before)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    ratios = {"trace": [], "none": []}
    for i in range(args.repeats):
        for mode in ("trace", "none") if i % 2 == 0 else ("none", "trace"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, args.arch, str(args.batch)],
                                 check=True, cwd=ROOT, capture_output=True, text=True).stdout
            ratios[mode].append(float(out.split()[-1]))
    for mode, values in ratios.items():
        print(f"{mode:5s} after/before: {', '.join(f'{v:.3f}' for v in values)}  "
              f"median {statistics.median(values):.3f}")
    slowdown = statistics.median(ratios["trace"]) / statistics.median(ratios["none"])
    print(f"slowdown left by a trace window: {slowdown:.3f} ({args.arch}, batch {args.batch}, "
          f"{args.repeats} processes each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
