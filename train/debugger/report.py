"""The debugger and profiler report: one self-contained HTML page and a JSON summary.

Written to ``/opt/ml/output/data/report/`` (so it lands in the job's output.tar.gz):
``report.html`` (plots embedded as PNG data URIs: no scripts, no network, opens anywhere),
``summary.json`` (the rule table and step/system statistics, for machines) and, beside them,
``trace.json`` (torch.profiler, Chrome trace format) written by the training loop.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from train.debugger.rules import TRIGGERED, RuleResult, step_outlier_limit_ms

REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
TRACE_JSON = "trace.json"
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _axes(figsize=(7, 3.2)):
    # matplotlib's object API, not pyplot (see train/outputs.py); constrained layout fits the
    # labels in one drawing pass, where bbox_inches="tight" draws every figure twice.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _plots(history: Sequence[dict], steps: Sequence, samples: Sequence) -> dict[str, str]:
    plots = {}
    fig, ax = _axes()
    epochs = [h["epoch"] for h in history]
    for key, style in (("train_loss", "o-"), ("valid_loss", "s-")):
        ys = [h.get(key, np.nan) for h in history]
        if epochs and not all(np.isnan(ys)):
            ax.plot(epochs, ys, style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    if ax.lines:
        ax.legend()
    plots["loss"] = _png(fig)

    fig, ax = _axes()
    times = np.array([s.step_ms for s in steps if not s.first_of_epoch])
    limit = step_outlier_limit_ms(steps)
    if times.size:
        ax.hist(times, bins=min(40, max(5, times.size // 3)), color="#4878a8")
        if limit is not None:
            ax.axvline(limit, color="#c0392b", linestyle="--", label=f"outlier limit {limit:.0f} ms")
            out = times[times > limit]
            if out.size:
                ax.plot(out, np.zeros_like(out), "v", color="#c0392b", markersize=9,
                        label=f"{out.size} outliers")
            ax.legend()
    ax.set_xlabel("step time (ms)")
    ax.set_ylabel("steps")
    ax.set_title("Step time")
    plots["steps"] = _png(fig)

    fig, ax = _axes()
    if samples:
        t = [s.t_s for s in samples]
        ax.plot(t, [s.cpu_percent for s in samples], label="CPU %")
        if any(s.gpu_percent for s in samples):
            ax.plot(t, [np.mean(s.gpu_percent) if s.gpu_percent else np.nan for s in samples],
                    label="GPU %")
            ax.plot(t, [100.0 * sum(s.gpu_memory_bytes) / max(sum(s.gpu_memory_total_bytes), 1)
                        if s.gpu_percent else np.nan for s in samples], label="GPU memory %")
        ax.legend()
    ax.set_ylim(0, 105)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("utilisation (%)")
    ax.set_title("Utilisation")
    plots["utilisation"] = _png(fig)
    return plots


def summarize(steps: Sequence, samples: Sequence) -> dict:
    """Step and system statistics: step count, p50/p95 step time (ms), data-wait share (0-1),
    images/s, mean CPU % and peak RSS (bytes), GPU means when sampled."""
    rows = [s for s in steps if not s.first_of_epoch] or list(steps)
    times = np.array([s.step_ms for s in rows], dtype=np.float64)
    total_ms = float(times.sum())
    out = {
        "steps": len(steps),
        "step_ms_p50": float(np.percentile(times, 50)) if times.size else None,
        "step_ms_p95": float(np.percentile(times, 95)) if times.size else None,
        "data_wait_share": (sum(s.wait_ms for s in rows) / total_ms) if total_ms else None,
        "images_per_second": (sum(s.batch_size for s in rows) / total_ms * 1000.0)
        if total_ms else None,
        "cpu_percent_mean": float(np.mean([s.cpu_percent for s in samples])) if samples else None,
        "rss_bytes_max": max((s.rss_bytes for s in samples), default=None),
    }
    gpu = [s for s in samples if s.gpu_percent]
    if gpu:
        out["gpu_percent_mean"] = float(np.mean([np.mean(s.gpu_percent) for s in gpu]))
        out["gpu_memory_bytes_max"] = max(sum(s.gpu_memory_bytes) for s in gpu)
    return out


def write_report(report_dir: Path, rules: Sequence[RuleResult], history: Sequence[dict],
                 steps: Sequence, samples: Sequence, job_name: str = "local",
                 trace_written: bool = False) -> Path:
    """Write ``report.html`` and ``summary.json`` to ``report_dir``; returns the HTML path.

    Args:
        rules: every rule's outcome (train.debugger.rules).
        history: per-epoch metric dicts (``epoch``, ``train_loss``, ``valid_loss``, ...).
        steps: train.debugger.monitor.StepRecord list; samples: train.debugger.monitor.SystemSample list.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    stats = summarize(steps, samples)
    summary = {
        "job_name": job_name,
        "rules": [r.as_dict() for r in rules],
        "triggered": [r.name for r in rules if r.status == TRIGGERED],
        "statistics": stats,
        "history": list(history),
        "trace": TRACE_JSON if trace_written else None,
    }
    (report_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=float))

    plots = _plots(history, steps, samples)
    esc = html.escape
    rows = "\n".join(
        f"<tr class='{esc(r.status.replace(' ', '-'))}'><td>{esc(r.name)}</td>"
        f"<td>{esc(r.kind)}</td><td>{esc(r.status)}</td>"
        f"<td>{'' if r.step is None else r.step}</td><td>{esc(r.detail)}</td>"
        f"<td>{esc(r.advice) if r.status == TRIGGERED else ''}</td></tr>"
        for r in rules
    )

    def fmt(v, unit=""):
        if v is None:
            return "n/a"
        return f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"

    stat_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in stats.items()
    )
    trace_line = (
        f"<p>torch.profiler trace of the last training steps: <code>{TRACE_JSON}</code> (open it "
        "in chrome://tracing or ui.perfetto.dev).</p>" if trace_written else
        "<p>No torch.profiler trace: it is taken on the job's last training steps, and this job "
        "stopped before them (early stopping or a failure), or ran with profiler-steps=0.</p>"
    )
    n_fired = len(summary["triggered"])
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Training report: {esc(job_name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.triggered td {{ background: #fde2e1; }}
tr.ok td:nth-child(3) {{ color: #1e7e34; }}
tr.no-data td {{ color: #777; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Training report: {esc(job_name)}</h1>
<p>{n_fired} of {len(rules)} rules triggered.</p>
<h2>Rules</h2>
<table><tr><th>rule</th><th>kind</th><th>status</th><th>step or epoch</th><th>detail</th>
<th>advice</th></tr>
{rows}
</table>
<h2>Loss</h2><img alt="loss curves" src="{plots['loss']}">
<h2>Step time</h2><img alt="step time histogram" src="{plots['steps']}">
<h2>Utilisation</h2><img alt="utilisation over time" src="{plots['utilisation']}">
<h2>Statistics</h2><table>{stat_rows}</table>
{trace_line}
</body></html>
"""
    path = report_dir / REPORT_HTML
    path.write_text(page, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# The report in a process of its own.
# --------------------------------------------------------------------------------------------
# Drawing the plots is about a second of Python (matplotlib's import, font set-up and drawing),
# which in a child process overlaps what the training process does meanwhile. A plain
# ``python -m train.debugger.report`` child, not multiprocessing: it imports neither torch nor
# the job's __main__ (the toolkit's or torchrun's), only numpy and matplotlib.
class ReportProcess:
    """Writes ``report.html`` and ``summary.json`` (the arguments of :func:`write_report`) in a
    child process; ``wait()`` returns the HTML's path.

    Raises (from ``wait``):
        RuntimeError: the child failed or ran past ``timeout_s``; the message holds its stderr.
    """

    def __init__(self, report_dir: Path, rules: Sequence[RuleResult], history: Sequence[dict],
                 steps: Sequence, samples: Sequence, job_name: str = "local",
                 trace_written: bool = False) -> None:
        self.report_dir = Path(report_dir)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        args = (str(self.report_dir), list(rules), list(history), list(steps), list(samples),
                job_name, trace_written)
        fd, self._inputs = tempfile.mkstemp(prefix="report-inputs-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(args, f)
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p))
        # One BLAS/OpenMP thread: the plots need no more, and numpy's OpenBLAS threads otherwise
        # spin on the core the training process is using.
        env.update({name: "1" for name in BLAS_THREAD_VARIABLES})
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, "-m", "train.debugger.report", self._inputs],
                                      env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def wait(self, timeout_s: float = 600.0) -> Path:
        try:
            code = self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            code = f"killed after {timeout_s:.0f} s"
        finally:
            os.unlink(self._inputs)
        self._stderr.seek(0)
        err = self._stderr.read().decode("utf-8", "replace")[-3000:]
        self._stderr.close()
        if code != 0:
            raise RuntimeError(f"report process failed ({code}): {err}")
        return self.report_dir / REPORT_HTML


def main(argv: Sequence[str]) -> int:
    """``python -m train.debugger.report ARGS.pkl``: the child side of :class:`ReportProcess`."""
    with open(argv[0], "rb") as f:
        args = pickle.load(f)
    write_report(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
