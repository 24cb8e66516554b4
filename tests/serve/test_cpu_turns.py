"""serve/cpu_turns.py: a forward waits (for a bounded time) for the decodes in flight, decodes
wait for a forward that holds the cores, and a decode past its deadline is refused without
holding the model back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve.cpu_turns import CpuTurns
from serve.errors import Overloaded

IMAGES = np.zeros((1, 4, 4, 3), np.uint8)


def _background(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_a_forward_waits_for_the_decode_in_flight():
    turns, order = CpuTurns(wait_s=60), []
    decoding, finish = threading.Event(), threading.Event()

    def decode():
        with turns.decode(time.monotonic() + 60):
            decoding.set()
            finish.wait(10)
            order.append("decode done")

    d = _background(decode)
    decoding.wait(10)
    f = _background(lambda: turns.forward(lambda x: order.append("forward") or x)(IMAGES))
    f.join(0.2)
    assert order == [] and f.is_alive()  # held back while the decode runs
    finish.set()
    d.join(10), f.join(10)
    assert order == ["decode done", "forward"]


def test_a_decode_waits_while_a_forward_holds_the_cores():
    turns, order = CpuTurns(wait_s=60), []
    running, finish = threading.Event(), threading.Event()

    def run(x):
        running.set()
        finish.wait(10)
        order.append("forward done")
        return x

    f = _background(lambda: turns.forward(run)(IMAGES))
    running.wait(10)

    def decode():
        with turns.decode(time.monotonic() + 60):
            order.append("decode")

    d = _background(decode)
    d.join(0.2)
    assert order == [] and d.is_alive()
    finish.set()
    f.join(10), d.join(10)
    assert order == ["forward done", "decode"]


def test_the_forward_waits_no_longer_than_its_bound():
    turns, ran = CpuTurns(wait_s=0.0), []
    with turns.decode(time.monotonic() + 60):
        assert turns.forward(lambda x: ran.append(1) or x + 1)(IMAGES)[0, 0, 0, 0] == 1
    assert ran == [1]


def test_a_decode_past_its_deadline_is_refused_and_leaves_no_count_behind():
    turns = CpuTurns(wait_s=60)
    running, finish = threading.Event(), threading.Event()
    f = _background(lambda: turns.forward(lambda x: running.set() or finish.wait(10) or x)(
        IMAGES))
    running.wait(10)
    with pytest.raises(Overloaded, match="held the worker's cores"):
        with turns.decode(time.monotonic() - 1):
            pass
    finish.set()
    f.join(10)
    # The refused decode is not counted: the next forward does not wait for it.
    done = []
    _background(lambda: turns.forward(lambda x: done.append(1) or x)(IMAGES)).join(10)
    assert done == [1]
