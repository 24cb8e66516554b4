"""The debugger and profiler of a training process, behind the few calls the training loop
makes: ``start``, ``mode``, ``steps`` / ``step_begin`` / ``step_end``, ``epoch_end``, ``close`` and
``report``.

What it holds (each off when not asked for):
- an smdebug hook (hook.py): the job's own (SageMaker Debugger's ``debughookconfig.json``) or,
  with ``debugger-rules=true``, a local one whose trial the in-container rules read;
- step timings and utilisation samples (monitor.py), and a torch.profiler trace of the job's
  last ``profiler-steps`` training steps;
- after training, the rules (rules.py, tensor_rules.py) and the report (report.py) in
  ``/opt/ml/output/data/report/``, written by rank 0.

The managed Debugger service closed to new customers on 2026-07-30; this package is what a new
account gets instead (docs/training.md).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from train import metrics
from train.debugger import hook as hook_lib
from train.debugger.monitor import StepMonitor, SystemSampler, TraceWindow
from train.debugger.report import TRACE_JSON, ReportProcess

logger = logging.getLogger(__name__)


class Debugger:
    """One training process's debugger and profiler.

    Args:
        rules: ``debugger-rules``: evaluate the rules and write the report.
        profiler_steps: training steps the trace covers (0: none); rank 0 only.
        input_config_dir: where SageMaker writes ``debughookconfig.json``.
        report_dir: ``/opt/ml/output/data/report``.
        net, loss_fn: registered with the hook.
        planned_steps: training steps this process will run (the hook spreads its saves).
        main: rank 0 (samples utilisation, traces, reports).

    Raises:
        TrainingError: numpy 2, or an invalid hook config (hook.create_hook).
    """

    def __init__(self, rules: bool, profiler_steps: int, input_config_dir: str, report_dir: Path,
                 net, loss_fn, planned_steps: int, main: bool, cuda: bool, job_name: str):
        self.rules, self.main, self.job_name = rules, main, job_name
        self.report_dir = Path(report_dir)
        trial_dir = tempfile.mkdtemp(prefix="smdebug-") if rules else None
        if trial_dir:
            # The local hook's trial is ours to delete. Registered before the hook's own atexit
            # cleanup, so it runs after it (atexit is last in, first out): that cleanup writes
            # an end-of-training marker into the folder.
            atexit.register(shutil.rmtree, trial_dir, ignore_errors=True)
        self.hook = hook_lib.create_hook(input_config_dir, net, loss_fn, trial_dir,
                                         planned_steps)
        self.monitor = StepMonitor() if rules else None
        self.sampler = SystemSampler() if rules and main else None
        self.trace = (TraceWindow(self.report_dir / TRACE_JSON, active=profiler_steps, cuda=cuda)
                      if rules and main and profiler_steps else None)
        self._closed = False

    def start(self, planned_steps: int) -> None:
        """Training starts: sample utilisation, and place the trace on the last of the
        ``planned_steps`` training steps (TraceWindow says why)."""
        if self.sampler is not None:
            self.sampler.start()
        if self.trace is not None:
            self.trace.start = max(1, planned_steps - self.trace.active)

    def mode(self, train: bool) -> None:
        """The loop switches to training or evaluation."""
        hook_lib.set_mode(self.hook, train)

    def steps(self, batches: Iterable, epoch: int) -> Iterator:
        """The batches of a training epoch, timed (the wait for each is the data-loader time)."""
        return self.monitor.iterate(batches, epoch) if self.monitor is not None else iter(batches)

    def step_begin(self) -> None:
        """A training step begins (on its batch)."""
        if self.trace is not None:
            self.trace.step_begin()

    def step_end(self, images: int) -> None:
        """A training step ended (synchronised: the loop read its loss)."""
        if self.monitor is not None:
            self.monitor.step_end(images)

    def epoch_end(self) -> None:
        """The epoch's training ended (or stopped): a trace window never runs into validation."""
        if self.trace is not None:
            self.trace.close()

    def close(self) -> None:
        """Close the hook (its trial is complete); again is a no-op."""
        if not self._closed and self.hook is not None:
            self.hook.close()
        self._closed = True

    def report(self, history: list[dict]) -> Path | None:
        """Evaluate every rule, log one ``rule_<Name>=0|1`` metric line and the rules that fired,
        and write report.html and summary.json (in a child process); rank 0 with rules only.
        Returns the HTML's path, or None when there is no report to write.

        Raises:
            RuntimeError: the report process failed.
        """
        self.close()
        if not (self.rules and self.main):
            return None
        from train.debugger import rules as rules_lib

        self.sampler.stop()
        self.epoch_end()
        results = rules_lib.evaluate_all(self.hook.out_dir if self.hook else None, history,
                                         self.monitor.steps, self.sampler.samples)
        metrics.log_metrics({f"rule_{r.name}": int(r.status == rules_lib.TRIGGERED)
                             for r in results if r.status != rules_lib.NO_DATA})
        fired = [r.name for r in results if r.status == rules_lib.TRIGGERED]
        logger.info("debugger rules: %s", ", ".join(fired) or "none triggered")
        pending = ReportProcess(self.report_dir, results, history, self.monitor.steps,
                                self.sampler.samples, self.job_name,
                                self.trace is not None and self.trace.written)
        path = pending.wait()
        logger.info("debugger report written: %s", path)
        return path
