"""``deploy.py monitor``: CloudWatch alarms on the endpoint's latency, error rate and drift scores,
and a dashboard of its metrics (deployment/monitoring.py says which); ``--delete`` removes them.

Both are idempotent: PutMetricAlarm and PutDashboard replace what has the same name, so a second
run changes nothing it does not have to. The metrics come from the container itself (EMF lines
on stdout, serve/metrics.py): SageMaker Model Monitor is closed to new customers.
"""

from __future__ import annotations

import json

from deployment import monitoring
from deployment.aws import is_not_found
from deployment.settings import Context, UserError, save_state

NAME = "monitor"
HELP = "CloudWatch alarms and a dashboard for the endpoint's metrics and drift"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--latency-p99-ms", type=float, default=1000.0,
                   help="alarm when a worker's p99 latency is over this (default 1000)")
    p.add_argument("--error-rate", type=float, default=0.05,
                   help="alarm when this share of invocations answer 5xx (default 0.05)")
    p.add_argument("--sns-topic", help="SNS topic ARN the alarms notify")
    p.add_argument("--variant", default="AllTraffic", help="production variant (AllTraffic)")
    p.add_argument("--delete", action="store_true", help="remove the alarms and the dashboard")


def alarm_names(endpoint: str) -> list[str]:
    """The names ``monitor`` gives the endpoint's alarms."""
    return [f"{endpoint}-{a.suffix}" for a in monitoring.alarms(1.0, 0.01)]


def dashboard_name(endpoint: str) -> str:
    """The name ``monitor`` gives the endpoint's dashboard."""
    return f"{endpoint}-monitoring"


def _dimensions(endpoint: str, variant: str) -> list[dict]:
    # Alarms and panels aggregate over model versions: one alarm survives a model update.
    return [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]


def put_alarms(cw, endpoint: str, variant: str, latency_p99_ms: float, error_rate: float,
               sns_topic: str | None) -> list[str]:
    """Create or update the endpoint's alarms; returns their names.

    Raises:
        UserError: an error rate outside (0, 1).
    """
    if not 0 < error_rate < 1:
        raise UserError(f"--error-rate {error_rate}: a share between 0 and 1, e.g. 0.05")
    actions = {"AlarmActions": [sns_topic], "OKActions": [sns_topic]} if sns_topic else {}
    dims = _dimensions(endpoint, variant)
    names = []
    for alarm in monitoring.alarms(latency_p99_ms, error_rate):
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
    """The dashboard: one metric widget per panel of deployment/monitoring.py."""
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


def run(ctx: Context, args) -> int:
    """Put (or with --delete, remove) the endpoint's alarms and dashboard."""
    endpoint = ctx.get("endpoint")
    cw = ctx.boto.client("cloudwatch")
    if args.delete:
        delete(cw, endpoint)
        return 0
    names = put_alarms(cw, endpoint, args.variant, args.latency_p99_ms, args.error_rate,
                       args.sns_topic)
    body = dashboard_body(endpoint, args.variant, ctx.region)
    cw.put_dashboard(DashboardName=dashboard_name(endpoint), DashboardBody=json.dumps(body))
    save_state(monitoring=endpoint)
    print(f"alarms for endpoint {endpoint}: {', '.join(names)}"
          + (f" (notifying {args.sns_topic})" if args.sns_topic else ""))
    print(f"dashboard: https://{ctx.region}.console.aws.amazon.com/cloudwatch/home?region="
          f"{ctx.region}#dashboards:name={dashboard_name(endpoint)}")
    return 0


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
