#!/usr/bin/env bash
# GPU training and serving throughput on this host, in one run: benchmarks/gpu_bench.py says what
# it measures. On a GPU host: benchmarks/gpu_bench.sh [--out DIR] [--budget-s 480]. On a CPU
# host (CI): benchmarks/gpu_bench.sh --dry-run (toy sizes, every phase that needs no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_bench.py "$@"
