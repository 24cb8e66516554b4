"""The tier check (tests/helpers/tiers.py): a unit test that trains, starts a server or an
engine, or takes too long fails with its name and what it did; the same test marked for its
tier passes; a unit test that asks for a model fixture is refused; every run writes what its
tests cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.helpers import tiers

SUITE = '''
import subprocess, sys, time
import pytest

def _serve(tmp_path):
    entry = tmp_path / "container" / "serve"
    entry.parent.mkdir()
    entry.write_text("")
    subprocess.run([sys.executable, str(entry)], check=True)

def _fake_engine(tmp_path):
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\\n")
    docker.chmod(0o755)
    subprocess.run([str(docker), "ps"], check=True)

def test_unit_serves(tmp_path):
    _serve(tmp_path)

def test_unit_sleeps():
    time.sleep(0.5)

def test_unit_reads_the_gunicorn_config():
    subprocess.run([sys.executable, "-c", "print('gunicorn_conf')"], check=True)

def test_unit_runs_a_stand_in_engine(tmp_path):
    _fake_engine(tmp_path)

@pytest.mark.model
def test_model_serves(tmp_path):
    _serve(tmp_path)

@pytest.mark.model
def test_model_sleeps():
    time.sleep(0.5)
'''


def run_pytest(folder, *args) -> subprocess.CompletedProcess:
    """pytest in a child process in ``folder`` with the tier plugin; stdout and stderr as text."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.helpers.tiers", "-p",
                           "no:cacheprovider", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """SUITE run with a unit test's limit of 0.3 s and the costs written beside it:
    ({test name: passed or failed}, pytest's output, the costs file)."""
    folder = tmp_path_factory.mktemp("suite")
    (folder / "test_suite.py").write_text(SUITE)
    run = run_pytest(folder, "-o", "tier_unit_limit_s=0.3", "-o",
                     f"tier_costs_dir={folder / 'costs'}", "-rA")
    outcomes = {}
    for line in run.stdout.splitlines():
        if line.startswith(("PASSED ", "FAILED ")):
            outcomes[line.split()[1].split("::")[-1]] = line.split()[0].lower()
    costs = json.loads((folder / "costs" / "tier-unit+model.json").read_text())
    return outcomes, run.stdout, costs


def test_a_unit_test_that_starts_a_server_or_is_slow_fails_with_its_name(outcome):
    outcomes, text, _ = outcome
    assert outcomes["test_unit_serves"] == "failed"
    assert ("tier check: test_suite.py::test_unit_serves is a unit test but started a process "
            "that runs container/serve") in text
    assert outcomes["test_unit_sleeps"] == "failed"
    assert "tier check: test_suite.py::test_unit_sleeps took 0." in text
    assert "over the unit tier's 0.3 s a test: make it faster or mark it model" in text


def test_the_same_work_in_its_tier_passes_and_stand_ins_are_not_engines(outcome):
    outcomes, _, _ = outcome
    assert outcomes["test_model_serves"] == outcomes["test_model_sleeps"] == "passed"
    assert outcomes["test_unit_reads_the_gunicorn_config"] == "passed"
    assert outcomes["test_unit_runs_a_stand_in_engine"] == "passed"


def test_every_run_writes_each_tests_cost_and_each_tiers_total(outcome):
    _, _, costs = outcome
    assert costs["tiers"]["unit"]["tests"] == 4 and costs["tiers"]["model"]["tests"] == 2
    slowest = [t["test"].split("::")[-1] for t in costs["tests"][:2]]
    assert sorted(slowest) == ["test_model_sleeps", "test_unit_sleeps"]
    assert all(t["seconds"] >= 0 for t in costs["tests"])


def test_an_optimizer_step_in_a_unit_test_is_a_model_trained():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.sum().backward()
    with tiers._UnitGuard() as guard:
        optimizer.step()
    assert guard.found == ["took an optimizer step (SGD): it trains a model"]
    with tiers._UnitGuard() as guard:
        pass
    optimizer.step()  # outside a unit test's call: not counted
    assert guard.found == []


def test_a_unit_test_using_a_model_fixture_is_refused_at_collection(tmp_path):
    (tmp_path / "test_suite.py").write_text("def test_needs_a_model(trained_model_dir):\n"
                                            "    pass\n")
    (tmp_path / "conftest.py").write_text("import pytest\n\n@pytest.fixture\n"
                                          "def trained_model_dir():\n    return None\n")
    run = run_pytest(tmp_path)
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert ("test_suite.py::test_needs_a_model uses the fixture trained_model_dir, which "
            "belongs to the model tier: mark it model") in run.stderr


def test_the_runner_stops_at_the_first_failing_step_and_ends_with_the_costs(
        tmp_path, monkeypatch, capsys):
    from tests.helpers import run_tiers

    steps = {"lint": [["true"]], "unit": [["sh", "-c", "exit 3"]], "model": [["true"]],
             "image": [["sleep", "30"]]}
    monkeypatch.setattr(run_tiers, "COSTS_DIR", tmp_path)
    monkeypatch.setattr(run_tiers, "commands", lambda step: steps[step])
    (tmp_path / "tier-unit.json").write_text(json.dumps({
        "tiers": {"unit": {"tests": 2, "seconds": 1.5}},
        "tests": [{"test": "t::slow", "tier": "unit", "seconds": 1.0},
                  {"test": "t::fast", "tier": "unit", "seconds": 0.5}]}))
    monkeypatch.setattr(run_tiers, "report", lambda walls, failed: seen.update(
        walls=walls, failed=failed))
    seen = {}
    assert run_tiers.run(["lint", "image", "unit", "model"]) == 3
    assert list(seen["walls"]) == ["lint", "unit"] and seen["failed"]  # model never ran
    assert "==== unit failed (exit 3): later steps not run" in capsys.readouterr().out
    assert not (tmp_path / "tier-unit.json").exists()  # an earlier run's costs are not reported


def test_the_report_lists_the_slowest_tests_and_each_step_against_its_budget(
        tmp_path, monkeypatch, capsys):
    from tests.helpers import run_tiers

    monkeypatch.setattr(run_tiers, "COSTS_DIR", tmp_path)
    (tmp_path / "tier-unit.json").write_text(json.dumps({
        "tiers": {"unit": {"tests": 2, "seconds": 1.5}},
        "tests": [{"test": "t::fast", "tier": "unit", "seconds": 0.5},
                  {"test": "t::slow", "tier": "unit", "seconds": 1.0}]}))
    run_tiers.report({"lint": 2.0, "unit": 200.0}, failed=False)
    out = capsys.readouterr().out
    assert out.index("t::slow") < out.index("t::fast")
    assert "unit            200 s of   180 s  OVER BUDGET  2 tests" in out
    assert "lint              2 s of    60 s  ok" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["unit"] == {"wall_s": 200.0, "budget_s": 180, "tests": 2,
                                        "seconds": 1.5}
    assert summary["total_s"] == 202.0 and [t["test"] for t in summary["slowest"]] == [
        "t::slow", "t::fast"]


def test_the_background_build_is_timed_to_its_own_end(tmp_path, monkeypatch):
    import time

    from tests.helpers import run_tiers

    monkeypatch.setattr(run_tiers, "COSTS_DIR", tmp_path)
    build = run_tiers.Background(["sh", "-c", "echo built"])
    time.sleep(1.0)  # the model tier, meanwhile
    status, seconds = build.wait()
    assert status == 0 and seconds < 0.9, seconds
    assert (tmp_path / "image-build.log").read_text() == "built\n"
