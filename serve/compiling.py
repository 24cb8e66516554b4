"""A worker's compiled programs, built beside it while it serves, and taken over as each is
ready.

A fresh host has an empty compile store; compiling ResNet50's four batch sizes takes about a
minute on a small CPU. So the worker serves first (its eager program: fp32, or bf16 where the
host runs it natively, never int8, which is slower than fp32 uncompiled) and a ``Watcher``
thread gets the compiled programs made:
- it starts compile helpers (serve/compile_helper.py: processes, at a lower priority, as many
  as SERVE_COMPILE_PROCESSES) when sizes are missing and no helper holds the entry, and tells
  them which sizes the worker's batches need most (``Entry.want``);
- as each size's package appears in the store, it hands its loading to the model thread
  (``Scheduler.between``): the size takes over between two batches, so no request is dropped,
  failed or answered twice;
- a failed compile is said once (a warning, the CompileFailures metric) and tried again after
  a back-off (``compiled.Failure.retry_at``, SERVE_COMPILE_RETRY_S); the sizes compiled before it keep serving, the
  others stay eager;
- a package that does not load is removed (``Classifier.adopt``) and compiled again.

Every worker of a host runs a Watcher for the same entry; the store's locks keep one helper per
size, and every worker adopts every size.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from serve import compiled
from serve.model import Classifier
from serve.scheduler import Scheduler

logger = logging.getLogger("serve")

POLL_S = 0.5
COMPILE_NICE = 10  # helpers yield the CPU to the workers' requests
ROOT = Path(__file__).resolve().parents[1]  # where the serve package is imported from


class Watcher:
    """Gets ``missing`` batch sizes of ``classifier`` compiled and adopted (see the module
    docstring). ``processes``: helpers to start at once; ``retry_s``: the first back-off after
    a failed compile (s); ``on_failure(reason)`` and
    ``on_complete()`` are called on the watcher's thread."""

    def __init__(self, classifier: Classifier, scheduler: Scheduler, missing: list[int],
                 processes: int, retry_s: float = compiled.RETRY_S, on_failure: Callable[[str], None] | None = None,
                 on_complete: Callable[[], None] | None = None, poll_s: float = POLL_S):
        self.classifier, self.scheduler = classifier, scheduler
        self.entry: compiled.Entry = classifier.entry
        self.missing = list(missing)
        self.processes = max(1, processes)
        self.retry_s = retry_s
        self.on_failure, self.on_complete = on_failure, on_complete
        self.poll_s = poll_s
        self.helpers: list[subprocess.Popen] = []
        self._pending: set[int] = set()  # handed to the model thread, not yet adopted
        self._said: compiled.Failure | None = None
        self._unwritten: compiled.Failure | None = None  # a failure the store could not take
        self._before_spawn: compiled.Failure | None = None  # the note when helpers started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compile-watcher", daemon=True)

    def start(self) -> "Watcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; helpers started go on (the next worker adopts what they make)."""
        self._stop.set()

    def close(self) -> None:
        """Stop watching and end the helpers this watcher started: for a holder that is not a
        gunicorn worker (a test, a benchmark), whose helpers would otherwise outlive it."""
        self.stop()
        for helper in self.helpers:
            helper.kill()
            helper.wait()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every size is adopted (or ``stop``); True when the thread ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._step():
                    return
            except Exception:  # noqa: BLE001 - the worker serves on, eagerly
                logger.exception("the compile watcher failed; it looks again in %.0f s",
                                 self.poll_s * 20)
                self._stop.wait(self.poll_s * 20)
            self._stop.wait(self.poll_s)

    def _step(self) -> bool:
        """One look at the store; True once every size is adopted."""
        for helper in list(self.helpers):
            status = helper.poll()  # reaps it
            if status is None:
                continue
            self.helpers.remove(helper)
            if status != 0 and self.entry.failure() == self._before_spawn:
                # Killed (the kernel's OOM killer) or crashed before it could leave a note.
                how = (f"killed by signal {-status}" if status < 0
                       else f"exited with status {status}")
                self._note(f"the compile helper was {how} before it said why")
        if not self.missing:
            if self.on_complete is not None:
                self.on_complete()
            return True
        ready = [s for s in self.entry.ready(self.missing) if s not in self._pending]
        if ready:
            self._pending.update(ready)
            self.scheduler.between(lambda sizes=ready: self._adopt(sizes))
        self._say_failure()
        self.entry.want(self._wanted())
        absent = [s for s in self.missing if not self.entry.package(s).is_dir()]
        if absent and not self.helpers and not self.entry.helpers_running():
            failure = self._failure()
            if failure is None or time.time() >= failure.retry_at(self.retry_s):
                if failure is not None:
                    logger.info("compiling batch sizes %s again (after %d failed attempt%s)",
                                absent, failure.attempts, "" if failure.attempts == 1 else "s")
                self._spawn(absent)
        return False

    def _adopt(self, sizes: list[int]) -> None:
        """On the model thread: the sizes' packages take over from the eager program."""
        start = time.perf_counter()
        try:
            failed = self.classifier.adopt(sizes)
        finally:
            self._pending.difference_update(sizes)
        adopted = [s for s in sizes if s not in failed]
        self.missing = [s for s in self.missing if s not in adopted]
        plan = self.classifier.plan
        self.scheduler.max_batch_size = plan.max_batch
        self.scheduler.ms_per_image = plan.ms(plan.max_batch) / plan.max_batch
        if adopted:
            logger.info("compiled batch sizes %s took over in %.0f ms (%s); %s", adopted,
                        (time.perf_counter() - start) * 1000, self.classifier.choice.precision,
                        f"still compiling {self.missing}" if self.missing
                        else "every batch size is compiled")
            logger.info("%s", plan.describe())

    def _wanted(self) -> list[int]:
        """The missing sizes, those the worker's batches asked for most first."""
        demand = dict(self.classifier.demand)
        order = compiled.default_order(self.missing)
        return sorted(order, key=lambda s: (-demand.get(s, 0), order.index(s)))

    def _failure(self) -> compiled.Failure | None:
        """The entry's failure note, or this worker's own when the note cannot be written."""
        return self.entry.failure() or self._unwritten

    def _note(self, reason: str) -> None:
        try:
            self.entry.note_failure(reason)
        except OSError:  # a full disk: the back-off is kept here instead
            last = self._unwritten
            self._unwritten = compiled.Failure(reason, time.time(),
                                               (last.attempts if last else 0) + 1)

    def _say_failure(self) -> None:
        failure = self._failure()
        if failure is None or failure == self._said:
            return
        self._said = failure
        wait = max(0.0, failure.retry_at(self.retry_s) - time.time())
        logger.warning("compile failed (%s); serving %s uncompiled for batch sizes %s, "
                       "trying again in %.0f s", failure.reason,
                       self.classifier.eager_precision, self.missing, wait)
        if self.on_failure is not None:
            self.on_failure(failure.reason)

    def _spawn(self, sizes: list[int]) -> None:
        """Start helpers for ``sizes`` holding the entry's HELPERS lock (None: some are
        running already)."""
        lock = self.entry.helpers_lock()
        if lock is None:
            return
        self._before_spawn = self.entry.failure()
        c = self.classifier
        device = str(c.device) if c.device.type == "cpu" else f"cuda:{c.device.index or 0}"
        command = [sys.executable, "-m", "serve.compile_helper",
                   "--program", str(c.target_program), "--sha256", c.target_sha256,
                   "--precision", c.choice.precision, "--crop", str(c.geometry.crop),
                   "--sizes", ",".join(map(str, c.sizes)), "--store", str(self.entry.store),
                   "--key", self.entry.key, "--device", device,
                   "--master-pid", os.environ.get("SERVE_MASTER_PID", str(os.getpid())),
                   "--nice", str(COMPILE_NICE if c.device.type == "cpu" else 0)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        count = min(self.processes, len(sizes))
        try:
            for _ in range(count):
                self.helpers.append(subprocess.Popen(
                    command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                    pass_fds=(lock.file.fileno(),)))
        finally:
            lock.close()  # the helpers hold it now
        logger.info("started %d compile helper%s for batch sizes %s", count,
                    "" if count == 1 else "s", sizes)
