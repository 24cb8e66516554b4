"""The dynamic batcher alone: a fake model that records its batches, real threads.

Times here are bounds with wide margins (a 10 s delay that must not be waited, a deadline of
0.3 s that must expire), not measurements: they hold on any machine.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from serve.budget import MemoryBudget
from serve.errors import Overloaded
from serve.scheduler import Scheduler


class FakeModel:
    """Returns, for each image, a row holding its first pixel value; records each batch's size
    and start time. ``gate`` (when set) holds the model until released."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.starts: list[float] = []
        self.gate = gate

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.starts.append(time.monotonic())
        if self.gate is not None:
            self.gate.wait(30)
        self.batches.append(len(images))
        return images[:, 0, 0, :1].astype(np.float32)


def image(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, dtype=np.uint8)


def request(s: Scheduler, value: int, n: int = 1, timeout: float = 30.0) -> np.ndarray:
    deadline = time.monotonic() + timeout
    s.admit(n, deadline)
    return s.wait(s.submit(image(value, n), deadline))


def in_threads(fns) -> list:
    results = [None] * len(fns)

    def run(i, fn):
        try:
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_a_lone_request_runs_at_once_whatever_the_delay():
    model = FakeModel()
    s = Scheduler(model, max_batch_size=8, max_batch_delay_s=10.0, max_queue=4, ms_per_image=1)
    start = time.monotonic()
    assert request(s, 7).tolist() == [[7.0]]
    assert model.starts[0] - start < 5.0  # far below the 10 s delay it never waited
    s.close()


def test_queued_requests_share_batches_up_to_the_max_size_and_keep_their_results():
    gate = threading.Event()
    model = FakeModel(gate)
    s = Scheduler(model, max_batch_size=4, max_batch_delay_s=0.0, max_queue=32, ms_per_image=1)
    first = threading.Thread(target=request, args=(s, 0))
    first.start()  # occupies the model until the gate opens
    while not model.starts:
        time.sleep(0.01)
    waiting = [lambda v=v: request(s, v) for v in range(1, 11)]
    threads_done = []

    def release_when_queued():
        while s.stats()["queued_images"] < 10:
            time.sleep(0.01)
        gate.set()
        threads_done.append(True)

    results = in_threads(waiting + [release_when_queued])
    first.join(30)
    assert [r.tolist() for r in results[:10]] == [[[float(v)]] for v in range(1, 11)]
    assert model.batches[0] == 1 and model.batches[1:] == [4, 4, 2]
    s.close()


def test_a_request_larger_than_the_batch_runs_alone_in_chunks():
    model = FakeModel()
    s = Scheduler(model, max_batch_size=4, max_batch_delay_s=0.0, max_queue=4, ms_per_image=1)
    out = request(s, 5, n=10)
    assert out.shape == (10, 1) and model.batches == [4, 4, 2]
    s.close()


def test_a_batch_waits_for_requests_still_decoding_but_not_past_the_delay():
    model = FakeModel()
    s = Scheduler(model, max_batch_size=8, max_batch_delay_s=0.3, max_queue=4, ms_per_image=1)
    deadline = time.monotonic() + 30
    s.admit(1, deadline)  # a request that never finishes decoding
    start = time.monotonic()
    assert request(s, 3).tolist() == [[3.0]]
    waited = model.starts[0] - start
    assert 0.25 <= waited < 5.0, waited  # it waited for the other, up to the 0.3 s delay
    s.release()
    s.close()


def test_a_decoding_request_that_arrives_in_time_joins_the_batch():
    model = FakeModel()
    s = Scheduler(model, max_batch_size=8, max_batch_delay_s=10.0, max_queue=4, ms_per_image=1)
    deadline = time.monotonic() + 30
    s.admit(1, deadline)  # decoding
    late = threading.Timer(0.2, lambda: s.wait(s.submit(image(9), deadline)))
    late.start()
    assert request(s, 3).tolist() == [[3.0]]
    late.join()
    assert model.batches == [2]  # one forward for both
    s.close()


def test_overload_and_deadlines_are_503s_not_hangs():
    gate = threading.Event()
    model = FakeModel(gate)
    s = Scheduler(model, max_batch_size=1, max_batch_delay_s=0.0, max_queue=2,
                  ms_per_image=1000)
    holder = threading.Thread(target=request, args=(s, 0))
    holder.start()
    while not model.starts:
        time.sleep(0.01)
    # The queue's bound: one request is in, one more fits, a third does not.
    deadline = time.monotonic() + 0.3
    s.admit(1, time.monotonic() + 30)
    with pytest.raises(Overloaded, match="queue's bound") as full:
        s.admit(1, time.monotonic() + 30)
    assert full.value.retry_after_s >= 1
    # Its deadline passes while it waits for a model that is busy: a 503, at the deadline.
    job = s.submit(image(1), deadline)
    start = time.monotonic()
    with pytest.raises(Overloaded, match="deadline"):
        s.wait(job)
    assert time.monotonic() - start < 5.0
    # The backlog (about 1 s per image, 1 running) is past a 0.5 s deadline: refused at once.
    with pytest.raises(Overloaded, match="queued ahead"):
        s.admit(1, time.monotonic() + 0.5)
    gate.set()
    holder.join(30)
    # The expired job was dropped, not run; the server goes on.
    assert model.batches == [1]
    assert request(s, 4).tolist() == [[4.0]]
    s.close()


def test_a_failing_model_fails_its_batch_and_the_scheduler_goes_on():
    calls = []

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        return images[:, 0, 0, :1].astype(np.float32)

    s = Scheduler(flaky, max_batch_size=4, max_batch_delay_s=0.0, max_queue=4, ms_per_image=1)
    with pytest.raises(RuntimeError, match="illegal memory"):
        request(s, 1)
    assert request(s, 2).tolist() == [[2.0]]
    s.close()


def test_the_cost_estimate_follows_measured_batches():
    def slow(images):
        time.sleep(0.05 * len(images))
        return images[:, 0, 0, :1].astype(np.float32)

    s = Scheduler(slow, max_batch_size=2, max_batch_delay_s=0.0, max_queue=4, ms_per_image=1)
    for _ in range(10):
        request(s, 1, n=2)
    assert s.ms_per_image > 25  # from 1 ms towards the 50 ms it measured
    s.close()


def test_memory_budget_queues_decodes_and_gives_up_at_the_deadline():
    budget = MemoryBudget(100)
    budget.acquire(80, time.monotonic() + 1)
    with pytest.raises(Overloaded, match="decode memory"):
        budget.acquire(30, time.monotonic() + 0.2)
    threading.Timer(0.1, budget.release, args=(80,)).start()
    budget.acquire(30, time.monotonic() + 30)  # freed in time
    budget.release(30)


class FakeDevice:
    """An asynchronous model (a GPU's ``launch``): each launch returns at once, and its result
    when collected; the first batch's result waits for ``first_done`` (the device busy on it).
    Records launches and collections in order."""

    def __init__(self, fail_collect: int | None = None):
        self.events: list[tuple[str, int]] = []
        self.launches = 0
        self.first_done = threading.Event()
        self.fail_collect = fail_collect

    def launch(self, parts):
        images = np.concatenate(parts)
        index, self.launches = self.launches, self.launches + 1
        self.events.append(("launch", len(images)))

        def collect():
            if index == 0:
                self.first_done.wait(30)
            self.events.append(("collect", len(images)))
            if index == self.fail_collect:
                raise RuntimeError("CUDA error: device-side assert triggered")
            return images[:, 0, 0, :1].astype(np.float32)

        return collect

    def forward(self, images):
        return self.launch([images])()


def test_an_asynchronous_model_gets_the_next_batch_before_the_last_is_collected():
    device = FakeDevice()
    s = Scheduler(device.forward, max_batch_size=4, max_batch_delay_s=0.0, max_queue=32,
                  ms_per_image=1, launch=device.launch)
    first = threading.Thread(target=request, args=(s, 0))
    first.start()
    while not device.launches:
        time.sleep(0.01)

    def release_when_queued():
        while s.stats()["queued_images"] < 5:
            time.sleep(0.01)
        device.first_done.set()

    # Five requests queue while the device holds the first batch; then batch 2 (four images)
    # is launched, and batch 3 (the fifth) before batch 2 is collected.
    results = in_threads([lambda v=v: request(s, v) for v in range(1, 6)] + [release_when_queued])
    first.join(30)
    assert [r.tolist() for r in results[:5]] == [[[float(v)]] for v in range(1, 6)]
    assert device.events == [("launch", 1), ("collect", 1), ("launch", 4), ("launch", 1),
                             ("collect", 4), ("collect", 1)], device.events
    s.close()


def test_an_asynchronous_batch_that_fails_fails_only_its_requests():
    device = FakeDevice(fail_collect=0)
    device.first_done.set()
    s = Scheduler(device.forward, max_batch_size=4, max_batch_delay_s=0.0, max_queue=4,
                  ms_per_image=1, launch=device.launch)
    with pytest.raises(RuntimeError, match="device-side assert"):
        request(s, 1)
    # The probe (blank images) succeeded, so the scheduler serves on.
    assert request(s, 2).tolist() == [[2.0]]
    assert s.healthy
    s.close()


def test_an_asynchronous_model_runs_a_request_larger_than_the_batch_in_chunks():
    device = FakeDevice()
    device.first_done.set()
    s = Scheduler(device.forward, max_batch_size=4, max_batch_delay_s=0.0, max_queue=4,
                  ms_per_image=1, launch=device.launch)
    assert request(s, 5, n=10).tolist() == [[5.0]] * 10
    assert [n for kind, n in device.events if kind == "launch"] == [4, 4, 2]
    s.close()


def test_a_task_handed_over_runs_on_the_model_thread_between_batches_never_during_one():
    gate = threading.Event()
    model = FakeModel(gate)
    s = Scheduler(model, 4, 0.0, 16, 1.0)
    try:
        ran = []
        running = threading.Thread(target=request, args=(s, 1))
        running.start()
        deadline = time.monotonic() + 10
        while not model.starts:  # the first batch is in the model
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s.between(lambda: ran.append(("task", threading.current_thread().name,
                                      len(model.batches))))
        s.between(lambda: 1 / 0)  # a failing task is logged; the thread goes on
        time.sleep(0.2)
        assert ran == []  # not while the batch runs
        gate.set()
        running.join(10)
        assert request(s, 2)[0, 0] == 2.0
        assert ran == [("task", "model", 1)]  # after the first batch, before the second
        assert s.healthy
        s.between(lambda: ran.append("idle"))  # an idle model thread runs it at once
        deadline = time.monotonic() + 10
        while len(ran) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        s.close()
