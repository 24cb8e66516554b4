#!/usr/bin/env python3
"""A serve log as a local HTML page of the endpoint's metrics: what `deploy.py monitor`'s
CloudWatch dashboard will show, on a laptop, before any AWS.

    python -m tools.metrics_page out/demo/serve.log [out/metrics.html]

It reads the Embedded Metric Format lines serve writes (serve/metrics.py), draws the dashboard's
panels (tools/monitoring.py) over time, and lists each alarm with its threshold, the worst
value the log holds and whether it would have fired. One self-contained page: plots embedded
as PNG, no scripts, no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import monitoring  # noqa: E402

STAT = {"Sum": sum, "Maximum": max, "Average": lambda v: sum(v) / len(v)}


def read_emf(log: Path) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(unix seconds, value), ...]}`` from a log's EMF lines (other lines skipped;
    documents with a Status dimension add up by status as ``Requests_<status>``)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in log.read_text(errors="replace").splitlines():
        start = line.find('{"')
        if start < 0 or '"_aws"' not in line:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        t = doc["_aws"]["Timestamp"] / 1000
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                name = metric["Name"]
                if "Status" in doc:
                    name = f"{name}_{doc['Status']}"
                values = doc[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    series[name].append((t, float(value)))
    return series


def period_s(series: dict) -> int:
    """CloudWatch's period (a minute), or 10 s for a log shorter than 10 minutes, which would
    otherwise be a point or two."""
    times = [t for points in series.values() for t, _ in points]
    return monitoring.PERIOD_S if times and max(times) - min(times) >= 600 else 10


def per_period(points: list[tuple[float, float]], stat: str, period: int = monitoring.PERIOD_S
               ) -> list[tuple[float, float]]:
    """CloudWatch's view: the points of each period reduced by ``stat``."""
    buckets: dict[float, list[float]] = defaultdict(list)
    for t, v in points:
        buckets[t // period * period].append(v)
    return [(t, STAT[stat](vs)) for t, vs in sorted(buckets.items())]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def panel(title: str, metrics: list[tuple[str, str]], series: dict, period: int) -> str:
    """One panel as a PNG data URI (the metrics over time, one line each)."""
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    for name, stat in metrics:
        points = per_period(series.get(name, []), stat, period)
        if points:
            times = [dt.datetime.fromtimestamp(t) for t, _ in points]
            ax.plot(times, [v for _, v in points], marker="o", label=f"{name} ({stat})")
    if title.startswith("Drift"):
        ax.axhline(monitoring.PSI_ALERT, color="#c0392b", linestyle="--", label="alarm")
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data in this log", ha="center", va="center",
                transform=ax.transAxes)
    fig.autofmt_xdate()
    return _png(fig)


def render(log: Path, out: Path, latency_p99_ms: float = 1000.0, error_rate: float = 0.05) -> Path:
    """Write the page for ``log`` to ``out``; returns ``out``."""
    series = read_emf(log)
    period = period_s(series)
    esc = html.escape
    rows = []
    for alarm in monitoring.alarms(latency_p99_ms, error_rate):
        if alarm.expression:
            calls = dict(per_period(series.get("Invocations", []), "Sum", period))
            errors = dict(per_period(series.get("Invocation5XXErrors", []), "Sum", period))
            values = [errors.get(t, 0) / n for t, n in calls.items() if n]
        else:
            values = [v for _, v in per_period(series.get(alarm.metric, []), alarm.statistic,
                                               period)]
        worst = max(values) if values else None
        fired = worst is not None and worst > alarm.threshold
        rows.append(f"<tr class='{'fired' if fired else 'ok'}'><td>{esc(alarm.suffix)}</td>"
                    f"<td>{esc(alarm.metric)}</td><td>&gt; {alarm.threshold:g}</td>"
                    f"<td>{'no data' if worst is None else f'{worst:.3g}'}</td>"
                    f"<td>{'would fire' if fired else 'ok'}</td><td>{esc(alarm.meaning)}</td>"
                    f"<td>{esc(alarm.action)}</td></tr>")
    images = "\n".join(f"<img alt='{esc(title)}' src='{panel(title, metrics, series, period)}'>"
                       for title, metrics in monitoring.PANELS)
    total = sum(v for _, v in series.get("Invocations", []))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>Endpoint metrics: {esc(log.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
img {{ width: 48%; margin: 0.5%; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.fired td {{ background: #fde2e1; }}
</style></head><body>
<h1>Endpoint metrics from {esc(str(log))}</h1>
<p>{total:.0f} invocations; the panels of <code>deploy.py monitor</code>'s dashboard, per
{period} s (CloudWatch's dashboard: per 60 s).</p>
{images}
<h2>Alarms</h2>
<table><tr><th>alarm</th><th>metric</th><th>threshold</th><th>worst period</th><th>here</th>
<th>what it means</th><th>what to do</th></tr>
{''.join(rows)}
</table>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    log = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else log.with_suffix(".metrics.html")
    print(render(log, out).resolve().as_uri())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
