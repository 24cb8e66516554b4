"""Compiled programs made once per host (serve/compiled.py) and the batch sizes a worker runs
and forms (serve/buckets.py).

The store's rules are checked with a stand-in compiler (no C++ build: fast); AOTInductor itself
compiles a small network for real, fp32 and bf16, and tests/serve/test_precision.py serves the
trained model's int8 and bf16 programs through it; tests/serve/test_compiling.py serves while
compiling.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from serve import buckets, compiled


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


def test_a_flat_cost_per_image_forms_the_largest_batch():
    # Within the noise margin of each other: under load the larger batch pays (fewer forwards).
    assert buckets.plan({1: 10.0, 2: 21.0, 4: 41.0, 8: 79.0}, 8).max_batch == 8
    assert buckets.plan({1: 10.0, 2: 21.0, 4: 43.0, 8: 88.0}, 8).max_batch == 8  # 10 % over
    assert buckets.plan({1: 10.0, 2: 21.0, 4: 43.0, 8: 90.0}, 8).max_batch == 4


def test_when_batching_does_not_pay_the_scheduler_forms_batches_of_one():
    plan = buckets.plan({1: 10.0, 2: 23.0, 4: 46.0, 8: 92.0}, 8)  # each 15 % dearer per image
    assert plan.max_batch == 1
    assert all(plan.runs[n] == (1,) * n for n in range(1, 9))
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


def test_sizes_compile_in_the_order_the_workers_want_then_one_large_to_small(tmp_path,
                                                                             monkeypatch):
    stand_in = StandIn(monkeypatch)
    entry = compiled.Entry(tmp_path, "key")
    assert compiled.default_order([1, 2, 4, 8]) == [1, 8, 4, 2]
    assert compiled.compile_sizes(entry, [1, 2, 4, 8], lambda size: size) == [1, 8, 4, 2]
    assert entry.ready([1, 2, 4, 8, 16]) == [1, 2, 4, 8]
    assert compiled.compile_sizes(entry, [1, 2, 4, 8], pytest.fail) == []  # all there
    other = compiled.Entry(tmp_path, "other")
    other.want([4, 2])  # the workers' batches needed 4, then 2
    compiled.compile_sizes(other, [1, 2, 4, 8], lambda size: size)
    assert stand_in.produced[4:] == [4, 2, 1, 8]


def test_a_size_another_helper_holds_is_left_to_it(tmp_path, monkeypatch):
    stand_in = StandIn(monkeypatch)
    entry = compiled.Entry(tmp_path, "key")
    with open(entry.path / "b8.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another helper compiling size 8
        assert compiled.compile_sizes(entry, [1, 2, 4, 8], lambda size: size) == [1, 4, 2]
    assert stand_in.produced == [1, 4, 2]


def test_a_failed_compile_is_noted_with_a_back_off_that_doubles(tmp_path, monkeypatch):
    StandIn(monkeypatch, fail_on=8)
    entry = compiled.Entry(tmp_path, "key")
    with pytest.raises(compiled.CompileUnavailable) as first:
        compiled.compile_sizes(entry, [1, 2, 4, 8], lambda size: size)
    assert str(first.value) == "batch size 8: RuntimeError: C++ compile error at 8"
    assert entry.ready([1, 2, 4, 8]) == [1]  # what compiled before it stays
    failure = entry.failure()
    assert failure.attempts == 1 and failure.retry_at(10) == pytest.approx(failure.at + 10)
    with pytest.raises(compiled.CompileUnavailable):
        compiled.compile_sizes(entry, [1, 2, 4, 8], lambda size: size)
    assert entry.failure().attempts == 2
    assert entry.failure().retry_at(10) == pytest.approx(entry.failure().at + 20)
    assert entry.failure().retry_at() == pytest.approx(entry.failure().at + 120)  # 60 s first
    entry.clear_failure()
    assert entry.failure() is None
    (entry.path / compiled.FAILED).write_text("{not json")
    assert entry.failure().attempts == 1  # an unreadable note is one failure, not a crash


def test_the_first_workers_timings_are_kept_per_thread_count(tmp_path):
    (tmp_path / "key").mkdir()
    assert compiled.saved_costs(tmp_path, "key", 2) is None
    compiled.save_costs(tmp_path, "key", 2, {1: 5.5, 8: 20.25})
    assert compiled.saved_costs(tmp_path, "key", 2) == {1: 5.5, 8: 20.25}
    assert compiled.saved_costs(tmp_path, "key", 1) is None  # another worker count
    (tmp_path / "key" / "costs-2-threads.json").write_text("[1, 2")
    assert compiled.saved_costs(tmp_path, "key", 2) is None


def test_the_store_is_private_and_refused_when_others_can_write_or_own_it(tmp_path):
    store = compiled.open_store(tmp_path / "cache" / "compiled")
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # what another user could make first at a fixed /tmp path
    with pytest.raises(compiled.CompileUnavailable, match=r"mode 0777 lets other users"):
        compiled.open_store(shared)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(compiled.CompileUnavailable, match="symbolic link"):
        compiled.open_store(tmp_path / "link")
    if os.geteuid() == 0:  # root can hand a folder to another user
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, 12345)
        with pytest.raises(compiled.CompileUnavailable, match="owned by uid 12345"):
            compiled.open_store(theirs)


def test_the_default_store_is_in_the_users_own_cache_not_a_fixed_tmp_path():
    from serve.settings_table import compile_cache_dir

    assert compile_cache_dir({"HOME": "/home/ml"}).startswith("/home/ml/.cache/")
    assert compile_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/sagemaker-dog-breeds/compiled"
    assert compile_cache_dir({"SERVE_COMPILE_CACHE_DIR": "/x"}) == "/x"


def test_shipped_packages_are_copied_into_the_store_and_never_over_one_there(tmp_path):
    shipped = tmp_path / "model" / "compiled" / "key"
    for size in (1, 8):
        (shipped / f"b{size}").mkdir(parents=True)
        (shipped / f"b{size}" / "package").write_text(f"shipped {size}")
    entry = compiled.Entry(compiled.open_store(tmp_path / "store"), "key")
    (entry.package(8)).mkdir()
    (entry.package(8) / "package").write_text("built here")
    assert entry.import_shipped(shipped, [1, 2, 4, 8]) == [1]
    assert (entry.package(1) / "package").read_text() == "shipped 1"
    assert (entry.package(8) / "package").read_text() == "built here"
    assert not list(entry.path.glob(".b*"))


def test_old_packages_go_when_another_is_made_unless_a_live_process_holds_them(tmp_path,
                                                                             monkeypatch):
    StandIn(monkeypatch)
    old, held, recent = (compiled.Entry(tmp_path, name) for name in ("old", "held", "recent"))
    for entry in (old, held, recent):
        entry.package(1).mkdir()
    lock = held.hold()  # a live worker of another model uses it
    day_ago = time.time() - compiled.EVICT_AFTER_S - 60
    for entry in (old, held):
        os.utime(entry.path / compiled.USED if (entry.path / compiled.USED).exists()
                 else entry.path, (day_ago, day_ago))
    compiled.evict_unused(tmp_path, keep="recent")
    lock.close()
    assert not old.path.exists() and held.path.exists() and recent.path.exists()


def test_helpers_running_is_seen_through_the_lock_they_inherit(tmp_path):
    entry = compiled.Entry(tmp_path, "key")
    assert not entry.helpers_running()
    lock = entry.helpers_lock()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             pass_fds=(lock.file.fileno(),))
    lock.close()  # the worker's copy: the child holds the lock now
    try:
        assert entry.helpers_running() and entry.helpers_lock() is None
    finally:
        child.kill()
        child.wait()
    assert not entry.helpers_running()


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
