"""Compiled programs made once per host (serve/compiled.py) and the batch sizes a worker runs
and forms (serve/buckets.py).

The store's rules are checked with a stand-in compiler (no C++ build: fast), two real processes
racing for the same sizes included; AOTInductor itself compiles a small network for real, fp32
and bf16, and tests/serve/test_precision.py serves the trained model's int8 and bf16 programs
through it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from serve import buckets, compiled
from tests.conftest import ROOT


# ------------------------------------------------------------------ buckets
def test_the_sizes_compiled_are_powers_of_two_and_the_max_and_at_most_eight():
    assert buckets.sizes_to_compile(8) == [1, 2, 4, 8]
    assert buckets.sizes_to_compile(6) == [1, 2, 4, 6]
    assert buckets.sizes_to_compile(1) == [1]
    assert buckets.sizes_to_compile(32) == [1, 2, 4, 8, 16, 32]
    assert buckets.sizes_to_compile(48) == [1, 2, 4, 8, 16, 32, 48]
    # Each size is a compile on the host's first start: batch 1 stays (a lone request is never
    # padded), the largest others fill the rest.
    assert buckets.sizes_to_compile(1024) == [1, 16, 32, 64, 128, 256, 512, 1024]
    assert all(len(buckets.sizes_to_compile(n)) <= buckets.MAX_SIZES for n in range(1, 1025))


def test_a_batch_pads_when_that_is_cheaper_and_batches_grow_while_they_pay():
    plan = buckets.plan({1: 11.0, 2: 12.0, 4: 14.0, 8: 18.0}, 8)  # a fixed cost per forward
    assert plan.runs[6] == (8,) and plan.runs[3] == (4,) and plan.runs[1] == (1,)
    assert plan.chunks(6) == [(0, 6, 8)]
    assert plan.max_batch == 8


def test_a_size_dearer_per_image_than_a_smaller_one_is_split_and_never_formed():
    # Batch 8 costs more per image than batch 4: 8 images run as two 4s, and the scheduler
    # forms no batch over 4 (8 would cost the same per image, and its first images would wait).
    plan = buckets.plan({1: 10.0, 2: 12.0, 4: 16.0, 8: 100.0}, 8)
    assert plan.runs[8] == (4, 4) and plan.runs[6] == (4, 2)
    assert plan.chunks(6) == [(0, 4, 4), (4, 6, 2)]
    assert plan.max_batch == 4
    assert plan.ms(6) == 28.0


def test_when_batching_does_not_pay_the_scheduler_forms_batches_of_one():
    plan = buckets.plan({1: 10.0, 2: 21.0, 4: 41.0, 8: 79.0}, 8)  # 8: within the noise margin
    assert plan.max_batch == 1
    assert all(plan.runs[n] == (1,) * n for n in range(1, 8)) and plan.runs[8] == (8,)
    assert plan.chunks(3) == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
    with pytest.raises(ValueError, match="batch size 1"):
        buckets.plan({2: 10.0}, 2)


# ------------------------------------------------------------------ keys
def test_the_key_changes_with_the_program_precision_host_and_torch(monkeypatch):
    cpu = torch.device("cpu")
    host = compiled.host_id(cpu, frozenset({"avx2", "avx512f"}))
    assert host == compiled.host_id(cpu, frozenset({"avx512f", "avx2"}))
    assert host != compiled.host_id(cpu, frozenset({"avx2", "avx512f", "amx_int8"}))
    base = compiled.key("a" * 64, "int8", host)
    assert base == compiled.key("a" * 64, "int8", host)
    assert len({base, compiled.key("b" * 64, "int8", host), compiled.key("a" * 64, "fp32", host),
                compiled.key("a" * 64, "int8", "cpu other")}) == 4
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert compiled.key("a" * 64, "int8", host) != base


# ------------------------------------------------------------------ the store, with a stand-in
class StandIn:
    """Replaces compiled.produce and compiled.load: records what was compiled; a package is a
    folder holding one file."""

    def __init__(self, monkeypatch, fail_on: int | None = None):
        self.produced, self.fail_on = [], fail_on
        monkeypatch.setattr(compiled, "produce", self.produce)
        monkeypatch.setattr(compiled, "load", lambda folder, device: folder.name)

    def produce(self, program, folder: Path) -> None:
        if program == self.fail_on:
            raise RuntimeError(f"C++ compile error at {program}\nsecond line")
        folder.mkdir()
        (folder / "package").write_text(str(program))
        self.produced.append(program)


def test_the_first_worker_compiles_and_the_next_ones_load(tmp_path, monkeypatch):
    stand_in = StandIn(monkeypatch)
    cpu = torch.device("cpu")
    first = compiled.obtain(tmp_path, "key", [1, 2, 4], lambda size: size, cpu)
    assert first == {1: "b1", 2: "b2", 4: "b4"} and stand_in.produced == [1, 2, 4]
    again = compiled.obtain(tmp_path, "key", [1, 2, 4], lambda size: pytest.fail("compiled"), cpu)
    assert again == first and stand_in.produced == [1, 2, 4]
    assert (tmp_path / "key" / compiled.USED).exists()


def test_the_first_workers_timings_are_kept_per_thread_count(tmp_path):
    (tmp_path / "key").mkdir()
    assert compiled.saved_costs(tmp_path, "key", 2) is None
    compiled.save_costs(tmp_path, "key", 2, {1: 5.5, 8: 20.25})
    assert compiled.saved_costs(tmp_path, "key", 2) == {1: 5.5, 8: 20.25}
    assert compiled.saved_costs(tmp_path, "key", 1) is None  # another worker count
    (tmp_path / "key" / "costs-2-threads.json").write_text("[1, 2")
    assert compiled.saved_costs(tmp_path, "key", 2) is None


def test_a_failed_compile_is_noted_and_later_workers_serve_eagerly_at_once(tmp_path,
                                                                          monkeypatch):
    StandIn(monkeypatch, fail_on=2)
    cpu = torch.device("cpu")
    with pytest.raises(compiled.CompileUnavailable) as first:
        compiled.obtain(tmp_path, "key", [1, 2, 4], lambda size: size, cpu)
    assert str(first.value) == "batch size 2: RuntimeError: C++ compile error at 2"
    start = time.monotonic()
    with pytest.raises(compiled.CompileUnavailable) as later:
        compiled.obtain(tmp_path, "key", [1, 2, 4], lambda size: pytest.fail("compiled"), cpu)
    assert time.monotonic() - start < 5
    assert str(later.value).startswith("batch size 2: RuntimeError: C++ compile error at 2; "
                                       f"noted in {tmp_path / 'key' / 'failed'}")


def test_a_worker_waits_for_a_size_another_holds_then_gives_up(tmp_path, monkeypatch):
    stand_in = StandIn(monkeypatch)
    (tmp_path / "key").mkdir()
    with open(tmp_path / "key" / "b2.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker compiling size 2
        with pytest.raises(compiled.CompileUnavailable, match=r"compiling batch sizes \[2\]"):
            compiled.obtain(tmp_path, "key", [1, 2], lambda size: size, torch.device("cpu"),
                            wait_s=0.5)
    assert stand_in.produced == [1]  # it compiled what nobody held meanwhile


RACER = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
from serve import compiled

def produce(program, folder):
    time.sleep(0.5)
    folder.mkdir()
    with open({log!r}, "a") as f:
        f.write(json.dumps([os.getpid(), program]) + "\\n")

compiled.produce = produce
compiled.load = lambda folder, device: folder.name
got = compiled.obtain(Path({store!r}), "key", [1, 2, 4, 8], lambda size: size,
                      torch.device("cpu"))
print(json.dumps(sorted(got)))
"""


@pytest.mark.model  # two processes compile a model
def test_two_workers_starting_together_compile_each_size_once_and_both_load_all(tmp_path):
    log = tmp_path / "produced.jsonl"
    script = RACER.format(root=str(ROOT), log=str(log), store=str(tmp_path / "store"))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [json.loads(out) for out, _ in outs] == [[1, 2, 4, 8]] * 2
    produced = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(size for _, size in produced) == [1, 2, 4, 8]


def test_packages_no_worker_loaded_for_a_day_are_removed_when_another_is_made(tmp_path,
                                                                             monkeypatch):
    StandIn(monkeypatch)
    old, recent = tmp_path / "old", tmp_path / "recent"
    for entry in (old, recent):
        (entry / "b1").mkdir(parents=True)
        (entry / compiled.USED).touch()
    day_ago = time.time() - compiled.EVICT_AFTER_S - 60
    os.utime(old / compiled.USED, (day_ago, day_ago))
    compiled.obtain(tmp_path, "key", [1], lambda size: size, torch.device("cpu"))
    assert not old.exists() and recent.exists() and (tmp_path / "key" / "b1").exists()


# ------------------------------------------------------------------ AOTInductor for real
class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.model
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_a_compiled_program_answers_as_the_eager_one(tmp_path, autocast):
    eager = Small().eval().to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    folder = tmp_path / "b2"
    (tmp_path / ".b2-killed").mkdir()  # what a worker killed mid-compile leaves
    compiled.produce(compiled.export(eager, 2, 16, cpu, autocast), folder)
    assert not list(tmp_path.glob(".b2-*")) and not list(folder.rglob("*.pt2"))
    program = compiled.load(folder, cpu)
    x = torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = program(x)
        with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
            want = eager(x).float()
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    assert torch.allclose(got, want, atol=1e-4 if autocast is None else 5e-2), (got, want)
