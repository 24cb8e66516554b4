"""Amazon CloudWatch: the endpoint's alarms and dashboard (tools/monitoring.py says which),
put and deleted idempotently: PutMetricAlarm and PutDashboard replace what has the same name, so
a second run changes nothing it does not have to."""

from __future__ import annotations

from tools import monitoring
from deployment.errors import UserError, is_not_found


def alarm_names(endpoint: str) -> list[str]:
    """The names ``monitor`` gives the endpoint's alarms."""
    return [f"{endpoint}-{a.suffix}" for a in monitoring.alarms(1.0, 0.01)]


def rollback_alarm_names(endpoint: str) -> list[str]:
    """The alarms of ``monitor`` that an update rolls back on: the server error rate and the p99
    latency (the drift alarms watch the inputs, not the new model)."""
    return [f"{endpoint}-{suffix}" for suffix in monitoring.ROLLBACK_ALARMS]


def existing_alarms(cw, names: list[str]) -> dict[str, str]:
    """Those of ``names`` that exist (metric or composite alarms), with their state."""
    if not names:
        return {}
    found = cw.describe_alarms(AlarmNames=sorted(set(names)),
                               AlarmTypes=["MetricAlarm", "CompositeAlarm"])
    return {a["AlarmName"]: a["StateValue"] for a in
            found.get("MetricAlarms", []) + found.get("CompositeAlarms", [])}


def dashboard_name(endpoint: str) -> str:
    """The name ``monitor`` gives the endpoint's dashboard."""
    return f"{endpoint}-monitoring"


def _dimensions(endpoint: str, variant: str) -> list[dict]:
    # Alarms and panels aggregate over model versions: one alarm survives a model update.
    return [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]


def put_alarms(cw, endpoint: str, variant: str, latency_p99_ms: float, error_rate: float,
               sns_topic: str | None, queue_depth: float = monitoring.QUEUE_DEPTH) -> list[str]:
    """Create or update the endpoint's alarms; returns their names.

    Raises:
        UserError: an error rate outside (0, 1).
    """
    if not 0 < error_rate < 1:
        raise UserError(f"--error-rate {error_rate}: a share between 0 and 1, e.g. 0.05")
    actions = {"AlarmActions": [sns_topic], "OKActions": [sns_topic]} if sns_topic else {}
    dims = _dimensions(endpoint, variant)
    names = []
    for alarm in monitoring.alarms(latency_p99_ms, error_rate, queue_depth):
        name = f"{endpoint}-{alarm.suffix}"
        common = dict(AlarmName=name, AlarmDescription=f"{alarm.meaning}. What to do: "
                      f"{alarm.action}.", Threshold=alarm.threshold,
                      ComparisonOperator="GreaterThanThreshold", EvaluationPeriods=3,
                      DatapointsToAlarm=3, TreatMissingData="notBreaching", **actions)
        if alarm.expression:
            def metric(id_, metric_name):
                return {"Id": id_, "ReturnData": False, "MetricStat": {
                    "Metric": {"Namespace": monitoring.NAMESPACE, "MetricName": metric_name,
                               "Dimensions": dims},
                    "Period": monitoring.PERIOD_S, "Stat": "Sum"}}

            cw.put_metric_alarm(Metrics=[
                metric("invocations", "Invocations"), metric("errors", "Invocation5XXErrors"),
                {"Id": "rate", "Expression": alarm.expression, "Label": alarm.metric,
                 "ReturnData": True}], **common)
        else:
            cw.put_metric_alarm(Namespace=monitoring.NAMESPACE, MetricName=alarm.metric,
                                Dimensions=dims, Statistic=alarm.statistic,
                                Period=monitoring.PERIOD_S, **common)
        names.append(name)
    return names


def dashboard_body(endpoint: str, variant: str, region: str) -> dict:
    """The dashboard: one metric widget per panel of tools/monitoring.py."""
    widgets = []
    for i, (title, metrics) in enumerate(monitoring.PANELS):
        widgets.append({
            "type": "metric", "x": (i % 2) * 12, "y": (i // 2) * 6, "width": 12, "height": 6,
            "properties": {
                "title": title, "region": region, "view": "timeSeries",
                "period": monitoring.PERIOD_S,
                "metrics": [[monitoring.NAMESPACE, name, "EndpointName", endpoint,
                             "VariantName", variant, {"stat": stat}]
                            for name, stat in metrics],
            }})
    return {"widgets": widgets}


def delete(cw, endpoint: str) -> None:
    """Remove the endpoint's alarms and dashboard; safe to repeat."""
    from botocore.exceptions import ClientError

    existing = [a["AlarmName"] for a in cw.describe_alarms(
        AlarmNames=alarm_names(endpoint))["MetricAlarms"]]
    if existing:
        cw.delete_alarms(AlarmNames=existing)
    print(f"deleted {len(existing)} alarms of {endpoint}" if existing else
          f"alarms of {endpoint}: already gone")
    try:
        cw.delete_dashboards(DashboardNames=[dashboard_name(endpoint)])
        print(f"deleted dashboard {dashboard_name(endpoint)}")
    except ClientError as exc:
        if not (is_not_found(exc) or exc.response["Error"]["Code"] == "ResourceNotFound"):
            raise
        print(f"dashboard {dashboard_name(endpoint)}: already gone")
