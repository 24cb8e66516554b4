"""train.monitor's TraceWindow: which steps its torch.profiler trace covers."""

from __future__ import annotations

import json

import torch

from train.monitor import TraceWindow


def _run(window: TraceWindow, steps: int) -> None:
    x = torch.randn(64, 64)
    for _ in range(steps):
        window.step_begin()
        (x @ x).sum().item()  # a training step's worth of ops, small


def _marked_steps(path) -> list[int]:
    events = json.loads(path.read_text())["traceEvents"]
    return sorted({int(e["name"].split("#")[1]) for e in events
                   if e.get("name", "").startswith("ProfilerStep#")})


def test_trace_covers_exactly_the_window(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=2, active=3)
    _run(window, 8)
    assert window.written
    assert _marked_steps(tmp_path / "trace.json") == [2, 3, 4]
    _run(window, 4)  # one window per job
    assert _marked_steps(tmp_path / "trace.json") == [2, 3, 4]


def test_window_cut_short_by_the_epoch_end_is_written(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=2, active=3)
    _run(window, 3)
    window.close()
    assert window.written and _marked_steps(tmp_path / "trace.json") == [2]


def test_job_ending_before_the_window_writes_no_trace(tmp_path):
    window = TraceWindow(tmp_path / "trace.json", start=5, active=3)
    _run(window, 4)
    window.close()
    assert not window.written and not (tmp_path / "trace.json").exists()
