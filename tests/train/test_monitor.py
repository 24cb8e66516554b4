"""train.debugger.monitor's TraceWindow: which steps its torch.profiler trace covers."""

from __future__ import annotations

import torch

from tests.conftest import profiled_steps
from train.debugger.monitor import TraceWindow


def _run(window: TraceWindow, steps: int) -> None:
    x = torch.randn(64, 64)
    for _ in range(steps):
        window.step_begin()
        (x @ x).sum().item()  # a training step's worth of ops, small


def test_trace_covers_exactly_the_window(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=2, active=3)
    _run(window, 8)
    assert window.written
    assert profiled_steps(tmp_path / "trace.json") == [2, 3, 4]
    _run(window, 4)  # one window per job
    assert profiled_steps(tmp_path / "trace.json") == [2, 3, 4]


def test_window_cut_short_by_the_epoch_end_is_written(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=2, active=3)
    _run(window, 3)
    window.close()
    assert window.written and profiled_steps(tmp_path / "trace.json") == [2]


def test_job_ending_before_the_window_writes_no_trace(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=5, active=3)
    _run(window, 4)
    window.close()
    assert not window.written and not (tmp_path / "trace.json").exists()


def test_a_trace_leaves_no_profiler_noise_on_stderr_and_keeps_real_errors(tmp_path, capfd):
    """libkineto prints USDT lines on every trace and, with no GPU, an ERROR that it cannot
    count GPUs; neither is news to the user. Anything else C++ writes meanwhile still shows."""
    import os

    from train.debugger.monitor import quiet_kineto

    window = TraceWindow(tmp_path / "trace.json", start=0, active=2)
    _run(window, 3)
    assert window.written
    with quiet_kineto():
        os.write(2, b"USDT:2026 1:1 X.cpp:1] profiler_start\nERROR: a real problem\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "gpuGetDeviceCount" not in err and "STAGE" not in err
    assert "ERROR: a real problem" in err
