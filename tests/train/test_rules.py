"""The in-container debugger and profiler rules: injected faults make them fire, a healthy run
fires none, and the HTML report renders in headless Chromium without console errors."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import digit_channels, make_job, profiled_steps, run_train
from tests.helpers.serving import ARTIFACTS, chromium
from train.debugger import rules

pytestmark = pytest.mark.model

# The rules do not read the int8 program, so the jobs calibrate none.
SMALL = {"arch": "resnet18", "batch-size": 16, "lr": 0.05, "image-size": 16,
         "pretrained": False, "num-workers": 0, "int8-calibration-images": 0}


def summary(run) -> dict:
    return json.loads((run.output_dir / "data" / "report" / "summary.json").read_text())


def test_healthy_run_fires_no_rule(trained_job):
    doc = summary(trained_job)
    assert doc["triggered"] == []
    by_name = {r["name"]: r["status"] for r in doc["rules"]}
    for name in ("VanishingGradient", "ExplodingTensor", "PoorWeightInitialization",
                 "LossNotDecreasing", "Overfit", "Overtraining", "Dataloader", "StepOutlier"):
        assert by_name[name] == "ok", (name, doc["rules"])
    assert by_name["LowGPUUtilization"] == "no data"  # no GPU here: said, not guessed
    assert "rule_Overfit=0" in trained_job.log
    # The trace covers the job's last 3 training steps (train.debugger.monitor.TraceWindow says why).
    marked = profiled_steps(trained_job.output_dir / "data" / "report" / "trace.json")
    steps = doc["statistics"]["steps"]
    assert marked == [steps - 3, steps - 2, steps - 1], (marked, steps)
    # The local hook's trial was a temporary folder: read, then removed.
    trial = re.search(r"rules writing to (\S+) \(weights", trained_job.log)
    assert trial and not Path(trial.group(1)).exists()


def test_profiler_steps_0_keeps_the_rules_and_takes_no_trace(tmp_path, digits_dir):
    from tools.datasets import subset

    small = subset(digits_dir, tmp_path / "small", per_class=4)
    run = run_train(make_job(tmp_path / "ml", digit_channels(small),
                             dict(SMALL, epochs=1, **{"profiler-steps": 0})))
    assert run.returncode == 0, run.log[-3000:]
    report_dir = run.output_dir / "data" / "report"
    doc = summary(run)
    assert doc["trace"] is None and not (report_dir / "trace.json").exists()
    assert {r["name"]: r["status"] for r in doc["rules"]}["ExplodingTensor"] == "ok"
    assert "profiler-steps=0" in (report_dir / "report.html").read_text()


def test_many_epochs_on_a_tiny_train_set_overfit(tmp_path, digits_dir):
    from tools.datasets import subset

    tiny = subset(digits_dir, tmp_path / "tiny", per_class=2)
    shutil.rmtree(tiny / "valid")
    shutil.copytree(subset(digits_dir, tmp_path / "v", per_class=10) / "valid", tiny / "valid")
    run = run_train(make_job(tmp_path / "ml", digit_channels(tiny), dict(SMALL, epochs=6)))
    assert run.returncode == 0, run.log[-3000:]
    assert "Overfit" in summary(run)["triggered"], summary(run)["rules"]
    assert "rule_Overfit=1" in run.log


def test_overtraining_on_a_recorded_history():
    """Valid loss bottoms out at epoch 3 while train loss keeps falling (the per-epoch logic;
    no injected fault made a real run show this reliably in CI's time)."""
    history = [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": v}
               for e, v in enumerate([1.5, 1.1, 0.9, 0.95, 1.0, 1.1, 1.2], start=1)]
    result = rules.overtraining(history)
    assert result.status == rules.TRIGGERED and result.step == 6
    healthy = [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": 1.5 / e} for e in range(1, 8)]
    assert rules.overtraining(healthy).status == rules.OK


def test_zero_initialisation_fires_weight_and_gradient_rules(tmp_path, digits_dir):
    import torchvision

    from tools.datasets import subset

    tiny = subset(digits_dir, tmp_path / "tiny", per_class=4)
    weights = tmp_path / "weights"
    weights.mkdir()
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, weights / "zeros.pth")
    channels = dict(digit_channels(tiny), pretrained=weights)
    run = run_train(make_job(tmp_path / "ml", channels,
                             dict(SMALL, epochs=1, pretrained=True, **{"freeze-epochs": 0})))
    assert run.returncode == 0, run.log[-3000:]
    fired = summary(run)["triggered"]
    assert "PoorWeightInitialization" in fired and "VanishingGradient" in fired, fired


def test_diverging_learning_rate_fails_with_a_report(tmp_path, digits_dir):
    """lr=10 drives the loss to NaN: the job fails (FailureReason says so) and the report it
    leaves shows ExplodingTensor, naming the tensor and the step where the first non-finite loss
    really came, and LossNotDecreasing."""
    from tools.datasets import subset

    tiny = subset(digits_dir, tmp_path / "tiny", per_class=20)
    run = run_train(make_job(tmp_path / "ml", digit_channels(tiny),
                             dict(SMALL, epochs=3, lr=10, momentum=0.99)))
    assert run.returncode != 0 and "loss became" in run.failure
    fired = summary(run)["triggered"]
    assert "ExplodingTensor" in fired and "LossNotDecreasing" in fired, summary(run)["rules"]
    exploding = next(r for r in summary(run)["rules"] if r["name"] == "ExplodingTensor")
    assert exploding["detail"].startswith("CrossEntropyLoss_output_0 is not finite at "), exploding
    # Where the first non-finite loss came, from what the job printed: weights that diverge in
    # an epoch's last step show first in that epoch's validation pass (eval steps count from 0
    # across epochs), else in the training step the FailureReason names (train steps count from
    # 0 across epochs, as the user's step-time histogram does). Which one it is depends on the
    # CPU's float results, so the test follows the job.
    batches = {split: -(-sum(1 for _ in (tiny / split).rglob("*.jpg")) // SMALL["batch-size"])
               for split in ("train", "valid")}
    epoch, step = map(int, re.search(r"training loss became \S+ at epoch (\d+) step (\d+)",
                                     run.failure).groups())
    valid_losses = [float(v) for v in re.findall(r"^epoch=\d+ .*valid_loss=(\S+)", run.log,
                                                 re.M)]
    bad_valid = [e for e, v in enumerate(valid_losses, 1) if not math.isfinite(v)]
    if bad_valid:
        first = bad_valid[0]
        assert first < epoch
        assert exploding["detail"].endswith(f" at eval step {exploding['step']}"), exploding
        assert (first - 1) * batches["valid"] <= exploding["step"] < first * batches["valid"]
    else:
        assert exploding["detail"].endswith(f" at train step {exploding['step']}"), exploding
        assert exploding["step"] == (epoch - 1) * batches["train"] + step, (exploding, epoch,
                                                                             step)
    # The failed job's report, as a user would open it (saved with the test output).
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-diverging-lr.png"
    report_html = run.output_dir / "data" / "report" / "report.html"
    log = chromium(report_html.as_uri(), shot, tmp_path / "profile")
    assert not re.findall(r"INFO:CONSOLE.*", log), log
    assert shot.stat().st_size > 20_000


SLOW_LOADER = """
import sys, time
from train import data, hyperparameters, loop
slow_load = data.load_rgb
def slow(path, **kw):
    time.sleep(0.03)  # slow storage: 30 ms more per photo
    return slow_load(path, **kw)
data.load_rgb = slow
root, tmp = sys.argv[1], sys.argv[2]
hp = hyperparameters.parse({"arch": "resnet18", "batch-size": 16, "lr": 0.05, "image-size": 16,
                            "pretrained": False, "num-workers": 0, "epochs": 1,
                            "int8-calibration-images": 0})
loop.run(loop.Job(channels={c: f"{root}/{c}" for c in ("train", "valid", "test")},
                  hyperparameters=hp, model_dir=f"{tmp}/model", output_data_dir=f"{tmp}/out",
                  checkpoint_dir=f"{tmp}/ckpt", input_config_dir=f"{tmp}/config"))
"""


def test_slow_data_loading_fires_dataloader(tmp_path, digits_dir):
    """A 30 ms sleep in every decode makes the DataLoader the bottleneck. Run in its own
    process: smdebug keeps process-wide hook state that other tests' runs would share."""
    import sys

    from tools.datasets import subset

    # 20 photos per class: 13 steps, so the debugger's two full saves (steps 0 and 1) do not
    # dominate the step time.
    tiny = subset(digits_dir, tmp_path / "tiny", per_class=20)
    result = subprocess.run([sys.executable, "-c", SLOW_LOADER, str(tiny), str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "report" / "summary.json").read_text())
    assert "Dataloader" in doc["triggered"], (doc["statistics"], [(r["name"], r["status"], r["detail"]) for r in doc["rules"]])
    assert doc["statistics"]["data_wait_share"] > 0.5


def test_step_outlier_rule_on_recorded_steps():
    from train.debugger.monitor import StepRecord

    steps = [StepRecord(i, 0, 1.0, 10.0, 8, i == 0) for i in range(200)]
    assert rules.step_outlier(steps).status == rules.OK
    for i in range(50, 62):
        steps[i].step_ms = 500.0
    result = rules.step_outlier(steps)
    assert result.status == rules.TRIGGERED and result.step == 50


def _gpu_samples(util: list[float], memory_percent: list[float], cpu: float):
    from train.debugger.monitor import SystemSample

    total = 16 * 2**30
    return [SystemSample(t_s=i * 0.5, cpu_percent=cpu, rss_bytes=2**30, gpu_percent=[u],
                         gpu_memory_bytes=[int(m / 100 * total)], gpu_memory_total_bytes=[total])
            for i, (u, m) in enumerate(zip(util, memory_percent))]


def test_gpu_rules_on_recorded_nvml_samples():
    # No GPU on CI: the four GPU rules read SystemSample lists, so record what NVML would say.
    def outcome(samples):
        return {r.name: r.status for r in rules.system_rules([], samples)
                if r.name in ("CPUBottleneck", "LowGPUUtilization", "BatchSize",
                              "GPUMemoryIncrease")}

    starved = _gpu_samples([5.0] * 40, [20.0] * 40, cpu=97.0)  # the input pipeline is the limit
    assert outcome(starved) == {"CPUBottleneck": rules.TRIGGERED,
                                "LowGPUUtilization": rules.TRIGGERED,
                                "BatchSize": rules.TRIGGERED, "GPUMemoryIncrease": rules.OK}
    leaking = _gpu_samples([95.0] * 40, [30.0 + i for i in range(40)], cpu=50.0)
    assert outcome(leaking) == {"CPUBottleneck": rules.OK, "LowGPUUtilization": rules.OK,
                                "BatchSize": rules.OK, "GPUMemoryIncrease": rules.TRIGGERED}
    small_batch = _gpu_samples([40.0] * 40, [10.0] * 40, cpu=30.0)
    assert outcome(small_batch)["BatchSize"] == rules.TRIGGERED
    assert outcome(small_batch)["CPUBottleneck"] == rules.OK
    assert set(outcome(_gpu_samples([], [], cpu=50.0)).values()) == {rules.NO_DATA}


def test_sampler_reads_utilisation_and_memory_through_nvml(monkeypatch):
    import types

    from train.debugger import monitor

    fake = types.ModuleType("pynvml")  # nvidia-ml-py's API, two GPUs
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=[30, 90][h], memory=0)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30,
                                                                   total=16 * 2**30, free=0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = monitor.SystemSampler(interval_s=0.01).start()
    time.sleep(0.2)
    sampler.stop()
    assert sampler.has_gpu and len(sampler.samples) >= 3
    sample = sampler.samples[-1]
    assert sample.gpu_percent == [30.0, 90.0]
    assert sample.gpu_memory_bytes == [2**30, 2 * 2**30]
    assert sample.gpu_memory_total_bytes == [16 * 2**30] * 2
    from train.debugger import report

    stats = report.summarize([], sampler.samples)
    assert stats["gpu_percent_mean"] == 60.0 and stats["gpu_memory_bytes_max"] == 3 * 2**30


def test_report_renders_in_chromium_without_console_errors(trained_job, tmp_path):
    # The check can fail: a page with a console error is seen as one.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom')</script></body></html>")
    assert "INFO:CONSOLE" in chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path / "p1")

    report_html = trained_job.output_dir / "data" / "report" / "report.html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-healthy.png"
    log = chromium(report_html.as_uri(), shot, tmp_path / "p2")
    assert not re.findall(r"INFO:CONSOLE.*", log), log
    assert shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one


def _one_step_trial(out_dir: Path, hook_factory) -> list[rules.RuleResult]:
    """Train a zero-initialised linear layer for one step under ``hook_factory``'s hook and
    evaluate the tensor rules on the trial it wrote."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    torch.nn.init.zeros_(net[1].weight)
    loss_fn = torch.nn.CrossEntropyLoss()
    hook = hook_factory(net, loss_fn)
    from smdebug import modes

    hook.set_mode(modes.TRAIN)
    loss = loss_fn(net(torch.randn(4, 12)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    hook.close()
    return {r.name: r for r in rules.evaluate_trial(str(out_dir))}


def test_tensor_rules_read_saved_reductions_and_whole_tensors_alike(tmp_path):
    import smdebug.pytorch as smd

    from train.debugger import hook as debugger

    # Ours: reductions only (a float per tensor), as the in-container rules hook saves them.
    ours = _one_step_trial(tmp_path / "ours", lambda net, loss_fn: debugger.create_hook(
        str(tmp_path / "no-config"), net, loss_fn, str(tmp_path / "ours"), total_steps=1))
    assert not list((tmp_path / "ours").rglob("*.npy"))
    # A job's own Debugger config: whole tensors; smdebug computes the same reductions.
    def whole(net, loss_fn):
        hook = smd.Hook(out_dir=str(tmp_path / "whole"), save_config=smd.SaveConfig(save_steps=[0]),
                        include_collections=["losses", "weights", "gradients"])
        hook.register_module(net)
        hook.register_loss(loss_fn)
        return hook

    theirs = _one_step_trial(tmp_path / "whole", whole)
    for results in (ours, theirs):
        assert results["PoorWeightInitialization"].status == rules.TRIGGERED, results
        assert "_1.weight is constant" in results["PoorWeightInitialization"].detail
        assert results["ExplodingTensor"].status == rules.OK
        assert results["VanishingGradient"].status == rules.OK  # the bias gets gradients


HOOK_WITHOUT_PANDAS = """
import sys, tempfile, torch
from train.debugger import hook as debugger, rules
out = tempfile.mkdtemp()
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
loss_fn = torch.nn.CrossEntropyLoss()
hook = debugger.create_hook(out + "/no-config", net, loss_fn, out + "/trial", total_steps=1)
debugger.set_mode(hook, train=True)
loss_fn(net(torch.randn(4, 12)), torch.tensor([0, 1, 2, 0])).backward()
hook.close()
assert {r.name for r in rules.evaluate_trial(out + "/trial")} >= {"ExplodingTensor"}
print("pandas after the hook and the rules:", "pandas" in sys.modules)
# smdebug's readers still get the real pandas on first use, and later imports see it too.
from smdebug.profiler import system_metrics_reader
print("DataFrame shape:", system_metrics_reader.pd.DataFrame({"a": [1, 2]}).shape)
import pandas
print("real module:", type(pandas) is type(sys) and pandas.DataFrame is not None)
"""


def test_the_rules_hook_and_trial_never_import_pandas_and_smdebug_still_can():
    # smdebug imports pandas (most of its import time) for readers a training job never
    # calls; train.debugger.hook defers it. A fresh interpreter: the test process may hold pandas.
    out = subprocess.run([sys.executable, "-c", HOOK_WITHOUT_PANDAS], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pandas after the hook and the rules: False" in out.stdout, out.stdout
    assert "DataFrame shape: (2, 1)" in out.stdout
    assert "real module: True" in out.stdout


def test_rules_hook_saves_weights_at_about_ten_steps_of_the_job():
    from train.debugger.hook import rules_save_steps

    assert rules_save_steps(20) == [0]
    assert rules_save_steps(2090) == list(range(0, 2090, 209))
    assert rules_save_steps(0) == [0]


def test_report_process_writes_the_report_and_reports_its_own_failure(tmp_path):
    from train.debugger import report

    history = [{"epoch": 1, "train_loss": 1.0, "valid_loss": 1.2}]
    ok = report.ReportProcess(tmp_path / "ok", [], history, [], [], "job-1").wait()
    assert ok == tmp_path / "ok" / report.REPORT_HTML and "job-1" in ok.read_text()
    broken = report.ReportProcess(tmp_path / "broken", [], [{"no": "epoch"}], [], [])
    with pytest.raises(RuntimeError, match="KeyError"):
        broken.wait()
