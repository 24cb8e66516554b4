"""benchmarks/gpu_bench.sh's dry run: every phase that needs no GPU, at toy sizes on the CPU, so
that the GPU benchmark cannot rot between the runs on a lent GPU host."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.model


def test_the_gpu_benchmark_s_dry_run_measures_every_cpu_phase(tmp_path):
    run = subprocess.run([str(ROOT / "benchmarks" / "gpu_bench.sh"), "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=900,
                         cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert results["decode"]["train_decode_augment_per_core"] > 0
    assert results["decode"]["serve_decode_per_core"] > 0
    for name in ("bare step b16", "bare step b32", "trainer b16 w1", "trainer b16 w2",
                 "trainer b32 w1", "trainer b32 w2"):
        assert results[name]["images_per_second"] > 0, (name, results[name])
    serve = results["serve c4 1 worker(s)"]
    # Every answer in the measured seconds was a 200, and there were some.
    assert set(serve["statuses"]) == {"200"} and serve["statuses"]["200"] > 0, serve
    assert serve["precision"].endswith(" eager")  # the worker logged its choice
    stages = serve["ms_per_request_in_log_tail"]
    assert 0 < stages["decode_cpu_ms"] <= stages["cpu_ms"] and stages["compute_ms"] > 0, stages
    assert "| trainer b32 w2 |" in run.stdout  # the summary table
