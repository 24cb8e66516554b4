"""Run the suite's steps in order, stop at the first that fails, and end with what each cost.

    python -m tests.helpers.run_tiers lint unit system-deps image model system   # make test
    python -m tests.helpers.run_tiers lint unit                                  # test-unit

Each tier is one pytest run (``-m TIER``); PYTEST_ADDOPTS reaches each. ``image`` starts the
test image's build (tests/helpers/image.py) in the background and goes on: the model tier runs
meanwhile, and the system tier waits for the build, then finds it in podman's cache. The run
ends, passed or failed, with the 25 slowest tests and each step's wall time against its budget
(tests/helpers/tiers.py BUDGETS_S), printed and written to ``out/test-costs/summary.json``.
Exit status: the failing step's, else 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from tests.helpers.tiers import BUDGETS_S, COSTS_DIR, ROOT, TIERS

VENV_BIN = ROOT / ".venv" / "bin"
# Checked before any test: a syntax error or an undefined name fails here in seconds.
RUFF_PATHS = ["contract", "train", "serve", "container", "tests", "tools", "deployment",
              "benchmarks", "deploy.py"]
SLOWEST = 25


def tool(name: str) -> str:
    """The virtual environment's copy of ``name`` where there is one, else the PATH's."""
    local = VENV_BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def commands(step: str) -> list[list[str]]:
    """The commands one step runs."""
    if step == "lint":
        return [[tool("hadolint"), "Dockerfile"],
                [tool("ruff"), "check", "--select", "F,E9", *RUFF_PATHS]]
    if step == "system-deps":  # after the unit tier: a broken unit test is reported first
        return [["make", "--no-print-directory", "system-deps"]]
    if step == "image":
        return [[sys.executable, "-m", "tests.helpers.image"]]
    if step in TIERS:
        return [[sys.executable, "-m", "pytest", "-m", step]]
    raise SystemExit(f"unknown step {step!r}: the steps are {', '.join(BUDGETS_S)}")


class Background:
    """The image build, started in the background with its output in out/test-costs/."""

    def __init__(self, command: list[str]):
        COSTS_DIR.mkdir(parents=True, exist_ok=True)
        self.log = COSTS_DIR / "image-build.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ended: float | None = None
        self._watch = threading.Thread(target=self._note_end, daemon=True)
        self._watch.start()

    def _note_end(self) -> None:
        self.proc.wait()
        self.ended = time.monotonic()

    def wait(self) -> tuple[int, float]:
        """(exit status, seconds from its start to its end: the build's own time, however
        long before this call it ended)."""
        self._watch.join()
        return self.proc.returncode, self.ended - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()


def run(steps: list[str]) -> int:
    """Runs ``steps`` in order until one fails; returns that step's exit status, else 0."""
    for step in steps:
        commands(step)  # an unknown step is refused before anything runs
    for old in COSTS_DIR.glob("tier-*.json"):
        old.unlink()
    walls: dict[str, float] = {}
    status, background = 0, None
    try:
        for step in steps:
            if step == "image":
                print("==== image: built in the background", flush=True)
                background = Background(commands(step)[0])
                continue
            if step == "system" and background is not None:
                built, walls["image"] = background.wait()
                background = None
                print(f"==== image: built in {walls['image']:.0f} s beside the model tier (exit "
                      f"{built}; on a failure the system tier builds it again and says why)",
                      flush=True)
            print(f"==== {step}", flush=True)
            started = time.monotonic()
            for command in commands(step):
                status = subprocess.call(command, cwd=ROOT)
                if status != 0:
                    break
            walls[step] = time.monotonic() - started
            if status != 0:
                print(f"==== {step} failed (exit {status}): later steps not run", flush=True)
                break
    finally:
        if background is not None:
            background.stop()
    report(walls, failed=status != 0)
    return status


def report(walls: dict[str, float], failed: bool) -> None:
    """Prints and writes the run's costs: the slowest tests of every tier that ran, and each
    step's wall time against its budget."""
    tests, tiers = [], {}
    for path in COSTS_DIR.glob("tier-*.json"):
        doc = json.loads(path.read_text())
        tests.extend(doc["tests"])
        tiers.update(doc["tiers"])
    tests.sort(key=lambda t: -t["seconds"])
    if tests:
        print(f"\n==== the {min(SLOWEST, len(tests))} slowest tests")
    for t in tests[:SLOWEST]:
        print(f"{t['seconds']:8.1f} s  {t['tier']:<6}  {t['test']}")
    print("\n==== each step against its budget (wall time, pytest's start included)")
    steps = {}
    for step, wall in walls.items():
        budget = BUDGETS_S[step]
        counted = tiers.get(step, {})
        steps[step] = {"wall_s": round(wall, 1), "budget_s": budget, **counted}
        flag = "OVER BUDGET" if wall > budget else "ok"
        count = (f"{counted['tests']} tests" if counted else
                 "beside the model tier" if step == "image" else "")
        print(f"{step:<11} {wall:7.0f} s of {budget:5d} s  {flag:<11}  {count}")
    total = sum(wall for step, wall in walls.items() if step != "image")
    print(f"{'total':<11} {total:7.0f} s of "
          f"{sum(BUDGETS_S[s] for s in walls if s != 'image'):5d} s"
          + ("  (stopped at a failing step)" if failed else ""))
    COSTS_DIR.mkdir(parents=True, exist_ok=True)
    (COSTS_DIR / "summary.json").write_text(json.dumps(
        {"steps": steps, "total_s": round(total, 1), "failed": failed,
         "slowest": tests[:SLOWEST]}, indent=1))


def main(argv: list[str]) -> int:
    return run(argv or list(BUDGETS_S))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
