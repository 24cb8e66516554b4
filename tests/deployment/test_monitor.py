"""deploy.py monitor: CloudWatch alarms and a dashboard, idempotently, and their removal."""

from __future__ import annotations

import json

from tests.deployment.conftest import ACCOUNT, REGION, run


def test_monitor_puts_alarms_and_a_dashboard_idempotently_and_delete_removes_them(aws, capsys):
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:dogs-alarms"
    argv = ("monitor", "--endpoint", "dogs-ep", "--latency-p99-ms", "800", "--sns-alarm", topic,
            "--queue-depth", "24")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    alarms = {c["AlarmName"]: c for c in aws.calls[("cloudwatch", "PutMetricAlarm")]}
    assert set(alarms) == {"dogs-ep-latency-p99", "dogs-ep-error-rate", "dogs-ep-queue-depth", *(
        f"dogs-ep-drift-{s}" for s in ("predictedclass", "confidence", "brightness",
                                       "aspectratio", "megapixels"))}
    latency = alarms["dogs-ep-latency-p99"]
    assert latency["Namespace"] == "SageMakerDogBreeds" and latency["MetricName"] == "LatencyP99"
    assert latency["Threshold"] == 800 and latency["Statistic"] == "Maximum"
    assert {"Name": "EndpointName", "Value": "dogs-ep"} in latency["Dimensions"]
    assert latency["AlarmActions"] == [topic] and "What to do" in latency["AlarmDescription"]
    rate = alarms["dogs-ep-error-rate"]
    assert [m["Id"] for m in rate["Metrics"]] == ["invocations", "errors", "rate"]
    assert rate["Metrics"][2]["Expression"] == "IF(invocations > 0, errors / invocations, 0)"
    assert alarms["dogs-ep-drift-brightness"]["Threshold"] == 0.25
    queue = alarms["dogs-ep-queue-depth"]  # the container's own metric (serve/metrics.py)
    assert (queue["MetricName"], queue["Threshold"], queue["Statistic"]) == (
        "QueueDepthMax", 24, "Maximum")
    (dashboard,) = aws.calls[("cloudwatch", "PutDashboard")]
    body = json.loads(dashboard["DashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert "Latency (ms)" in titles and "Drift (PSI against the training baseline)" in titles
    assert "Queue depth (jobs waiting in a worker)" in titles
    cw = aws.session.client("cloudwatch", region_name=REGION)
    assert len(cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"]) == 8

    code, out, err = run(capsys, *argv)  # again: the same alarms and dashboard, replaced
    assert code == 0, err
    assert len(cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"]) == 8
    assert len(cw.list_dashboards()["DashboardEntries"]) == 1

    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--delete")
    assert code == 0, err
    assert "deleted 8 alarms of dogs-ep" in out and "deleted dashboard dogs-ep-monitoring" in out
    assert cw.describe_alarms(AlarmNamePrefix="dogs-ep-")["MetricAlarms"] == []
    assert cw.list_dashboards()["DashboardEntries"] == []
    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--delete")
    assert code == 0 and "already gone" in out


def test_monitor_rejects_a_bad_error_rate_before_any_call(aws, capsys):
    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--error-rate", "5")
    assert code == 1 and "--error-rate 5.0: a share between 0 and 1" in err
    assert "warning: --error-rate is deprecated; use --error-percent 500" in err
    code, out, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--error-percent", "150")
    assert code == 1 and "--error-percent 150: a percentage between 0 and 100" in err
    assert not aws.calls[("cloudwatch", "PutMetricAlarm")]


def test_the_error_alarm_takes_a_percentage_as_every_other_percent_flag(aws, capsys):
    code, _, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--error-percent", "2")
    assert code == 0, err
    code, _, err = run(capsys, "monitor", "--endpoint", "dogs-ep", "--error-rate", "0.02")
    assert code == 0 and "deprecated" in err
    first, second = [[c for c in aws.calls[("cloudwatch", "PutMetricAlarm")]
                      if c["AlarmName"] == "dogs-ep-error-rate"][i] for i in (0, 1)]
    assert first["Threshold"] == second["Threshold"] == 0.02
