"""The suite's tiers, their budgets, and the checks that keep each test in its tier.

A pytest plugin (tests/conftest.py loads it). Every test belongs to exactly one tier:

- ``unit``: no model trained, no server process, no image; unmarked tests are unit tests.
- ``model`` (``pytestmark = pytest.mark.model``): trains or serves small models, in-process or
  under gunicorn, or needs seconds for another reason (a full-size data set).
- ``system`` (``pytest.mark.system``): the image, podman, the SDK's local mode.

A unit test that trains (a torch optimizer step, or the ``train`` entry), forks a server or
an image (gunicorn, ``serve``, podman, docker) or takes over ``UNIT_TEST_LIMIT_S`` fails with
its name and what it did. Each pytest run writes what its tests cost to
``out/test-costs/tier-<tier>.json`` (tests/helpers/run_tiers.py prints the run's total).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COSTS_DIR = ROOT / "out" / "test-costs"
TEMP = Path(tempfile.gettempdir()).resolve()

# Wall-clock budgets of each step of `make test`, in seconds, on a 2-vCPU machine of our kind
# (the README gives the measured figures; CI has 90 minutes for all of it, venv included). A
# step includes pytest's start and collection; the image is built in the background while the
# model tier runs (tests/helpers/run_tiers.py), so its time is not added to the total.
BUDGETS_S = {"lint": 60, "unit": 180, "system-deps": 300, "image": 900, "model": 1500,
             "system": 480}
TIERS = ("unit", "model", "system")
UNIT_TEST_LIMIT_S = 5.0

# Fixtures that train a model, serve one or build the image: a test that uses one is at least
# in the tier named.
FIXTURE_TIERS = {"trained_job": "model", "trained_model_dir": "model", "server": "model",
                 "image": "system"}


def tier_of(item) -> str:
    """The tier of a collected test: its closest tier marker, else unit."""
    for tier in ("system", "model"):
        if item.get_closest_marker(tier) is not None:
            return tier
    return "unit"


def pytest_addoption(parser):
    parser.addini("tier_unit_limit_s", "seconds a unit test may take (setup and call)",
                  default=str(UNIT_TEST_LIMIT_S))
    parser.addini("tier_costs_dir", "where each run writes what its tests cost",
                  default=str(COSTS_DIR))


def pytest_configure(config):
    for tier, what in (("unit", "no model, no server process, no image (the default)"),
                       ("model", "trains or serves small models, in-process or under gunicorn"),
                       ("system", "the image, podman, the SDK's local mode")):
        config.addinivalue_line("markers", f"{tier}: {what}")
    config._tier_costs = []


def pytest_collection_modifyitems(config, items):
    """Marks every unmarked test ``unit`` (so ``-m unit`` selects them) and refuses a test whose
    fixtures belong to a heavier tier than its own."""
    order = {tier: i for i, tier in enumerate(TIERS)}
    for item in items:
        tier = tier_of(item)
        if tier == "unit":
            item.add_marker(pytest.mark.unit)
        for name in set(FIXTURE_TIERS) & set(getattr(item, "fixturenames", ())):
            needs = FIXTURE_TIERS[name]
            if order[needs] > order[tier]:
                raise pytest.UsageError(f"{item.nodeid} uses the fixture {name}, which belongs "
                                        f"to the {needs} tier: mark it {needs}")


class TierViolation(Exception):
    """A unit test did what only a heavier tier may do."""


def _engine(words: list[str], env: dict | None) -> str | None:
    """What a unit test must not start that the command ``words`` runs (the train and serve
    entries, gunicorn, torchrun, podman, docker), or None. A stand-in the test wrote
    into a temporary folder (a fake ``docker`` on PATH) is not an engine."""
    program = Path(words[0]).name if words else ""
    if program in ("podman", "docker"):
        path = (env or os.environ).get("PATH")
        found = shutil.which(words[0], path=path) or words[0]
        return None if Path(found).resolve().is_relative_to(TEMP) else program
    if program in ("gunicorn", "torchrun"):
        return program
    for i, word in enumerate(words):
        if word.endswith(("container/train", "container/serve")):
            return word.rsplit("/", 2)[-2] + "/" + word.rsplit("/", 1)[-1]
        if word == "-m" and i + 1 < len(words) and words[i + 1] in ("gunicorn",
                                                                    "torch.distributed.run"):
            return words[i + 1]
    return None


class _UnitGuard:
    """While a unit test runs: records each forbidden process it starts and each optimizer step
    it takes (a model trained). torch's hook is registered once torch is imported, so that the
    guard never imports torch itself (seconds charged to whichever test came first)."""

    active: "_UnitGuard | None" = None
    _hooked = False

    def __init__(self):
        self.found: list[str] = []
        self._popen_init = subprocess.Popen.__init__

    @classmethod
    def _hook_optimizers(cls):
        if cls._hooked or "torch.optim" not in sys.modules:
            return
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        def stepped(optimizer, args, kwargs):
            guard = cls.active
            if guard is not None and not any("optimizer step" in f for f in guard.found):
                guard.found.append(f"took an optimizer step ({type(optimizer).__name__}): "
                                   f"it trains a model")

        register_optimizer_step_pre_hook(stepped)
        cls._hooked = True

    def __enter__(self):
        guard, original = self, self._popen_init

        def checked_init(popen, args, *a, **kw):
            words = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
            words = [os.fsdecode(w) if isinstance(w, (bytes, os.PathLike)) else str(w)
                     for w in words]
            if len(words) == 1 and kw.get("shell"):
                words = words[0].split()
            hit = _engine(words, kw.get("env"))
            if hit:
                guard.found.append(f"started a process that runs {hit}: "
                                   f"{' '.join(words)[:160]}")
            return original(popen, args, *a, **kw)

        subprocess.Popen.__init__ = checked_init
        self._hook_optimizers()
        _UnitGuard.active = self
        return self

    def __exit__(self, *exc):
        subprocess.Popen.__init__ = self._popen_init
        _UnitGuard.active = None
        self._hook_optimizers()  # torch imported by this test: the next ones are watched
        return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if tier_of(item) != "unit":
        return (yield)
    with _UnitGuard() as guard:
        result = yield
    if guard.found:
        raise TierViolation(f"tier check: {item.nodeid} is a unit test but "
                            + "; ".join(guard.found) + ": mark it model or system")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Times each shared fixture (module or session scope): its cost is the run's, listed on
    its own, and not charged to the test that happened to come first."""
    config = request.config
    if fixturedef.scope == "function" or getattr(config, "_tier_in_shared", False):
        return (yield)  # a shared fixture's own fixtures are in its time
    config._tier_in_shared = True
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        config._tier_in_shared = False
        seconds = time.perf_counter() - started
        item = getattr(request, "_pyfuncitem", None)
        if item is not None:
            item._tier_shared_seconds = getattr(item, "_tier_shared_seconds", 0.0) + seconds
            config._tier_costs.append({
                "test": f"{fixturedef.scope} fixture {fixturedef.argname} (first used by "
                        f"{item.nodeid})", "tier": tier_of(item), "seconds": round(seconds, 3),
                "fixture": True})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds up each test's setup, call and teardown, less the shared fixtures it set up; fails a
    unit test whose own setup and call took over ``UNIT_TEST_LIMIT_S``."""
    report = yield
    shared = getattr(item, "_tier_shared_seconds", 0.0) if call.when == "setup" else 0.0
    item._tier_seconds = getattr(item, "_tier_seconds", 0.0) + call.duration - shared
    tier = tier_of(item)
    limit = float(item.config.getini("tier_unit_limit_s"))
    if call.when == "call" and tier == "unit" and report.passed and item._tier_seconds > limit:
        report.outcome = "failed"
        report.longrepr = (f"tier check: {item.nodeid} took {item._tier_seconds:.1f} s, over "
                           f"the unit tier's {limit:g} s a test: make it faster or mark it "
                           f"model")
    if call.when == "teardown":
        item.config._tier_costs.append({"test": item.nodeid, "tier": tier,
                                        "seconds": round(item._tier_seconds, 3)})
    return report


def pytest_sessionfinish(session, exitstatus):
    """Writes ``out/test-costs/tier-<tiers>.json``: each test's seconds (setup, call and teardown)
    and each tier's count and total."""
    costs = getattr(session.config, "_tier_costs", [])
    if not costs:
        return
    tiers = sorted({c["tier"] for c in costs}, key=TIERS.index)
    totals = {t: {"tests": sum(c["tier"] == t and not c.get("fixture") for c in costs),
                  "seconds": round(sum(c["seconds"] for c in costs if c["tier"] == t), 1)}
              for t in tiers}
    folder = Path(session.config.getini("tier_costs_dir"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"tier-{'+'.join(tiers)}.json").write_text(json.dumps(
        {"tiers": totals, "tests": sorted(costs, key=lambda c: -c["seconds"])}, indent=1))


def pytest_terminal_summary(terminalreporter):
    costs = getattr(terminalreporter.config, "_tier_costs", [])
    if not costs:
        return
    terminalreporter.section("what the tests cost")
    for tier in TIERS:
        mine = [c for c in costs if c["tier"] == tier]
        if mine:
            tests = sum(not c.get("fixture") for c in mine)
            seconds = sum(c["seconds"] for c in mine)
            terminalreporter.write_line(f"{tier}: {tests} tests, {seconds:.0f} s in tests and "
                                        f"their shared fixtures")
