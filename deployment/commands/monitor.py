"""``deploy.py monitor``: CloudWatch alarms on the endpoint's latency, error rate, queue depth and
drift scores, and a dashboard of its metrics (tools/monitoring.py says which); ``--delete``
removes them.

Both are idempotent (deployment/cloudwatch.py). The metrics come from the container itself (EMF
lines on stdout, serve/metrics.py): SageMaker Model Monitor is closed to new customers.
"""

from __future__ import annotations

import json
import sys

from deployment.cloudwatch import dashboard_body, dashboard_name, delete, put_alarms
from deployment.aliases import renamed
from deployment.errors import UserError
from deployment.settings import Context, save_state
from tools import monitoring

NAME = "monitor"
HELP = "CloudWatch alarms and a dashboard for the endpoint's metrics and drift"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--latency-p99-ms", type=float, default=1000.0,
                   help="alarm when a worker's p99 latency is over this (default 1000)")
    p.add_argument("--error-percent", type=float, default=5.0, metavar="PERCENT",
                   help="alarm when this percentage of invocations answer 5xx, 0-100 (default 5, "
                        "as --capture and the update strategies' percentages)")
    p.add_argument("--error-rate", type=float, metavar="SHARE",
                   help="deprecated: the same as a share, 0-1 (0.05 is --error-percent 5)")
    p.add_argument("--queue-depth", type=float, default=monitoring.QUEUE_DEPTH,
                   help="alarm when a worker's queue holds more jobs than this (default "
                        f"{monitoring.QUEUE_DEPTH:g})")
    renamed(p, "--sns-alarm", "--sns-topic", dest="sns_topic", metavar="TOPIC_ARN",
            help="SNS topic told of each alarm's change (as --sns-success and --sns-error)")
    p.add_argument("--variant", default="AllTraffic", help="production variant (AllTraffic)")
    p.add_argument("--delete", action="store_true", help="remove the alarms and the dashboard")


def error_share(args) -> float:
    """The error-rate alarm's threshold as a share (0-1): --error-percent / 100, or the
    deprecated --error-rate (said on stderr).

    Raises:
        UserError: a percentage outside (0, 100).
    """
    if args.error_rate is not None:
        print(f"warning: --error-rate is deprecated; use --error-percent "
              f"{args.error_rate * 100:g}", file=sys.stderr)
        return args.error_rate
    if not 0 < args.error_percent < 100:
        raise UserError(f"--error-percent {args.error_percent:g}: a percentage between 0 and "
                        "100, e.g. 5")
    return args.error_percent / 100


def run(ctx: Context, args) -> int:
    """Put (or with --delete, remove) the endpoint's alarms and dashboard."""
    endpoint = ctx.get("endpoint")
    cw = ctx.boto.client("cloudwatch")
    if args.delete:
        delete(cw, endpoint)
        return 0
    names = put_alarms(cw, endpoint, args.variant, args.latency_p99_ms, error_share(args),
                       args.sns_topic, args.queue_depth)
    body = dashboard_body(endpoint, args.variant, ctx.region)
    cw.put_dashboard(DashboardName=dashboard_name(endpoint), DashboardBody=json.dumps(body))
    save_state(monitoring=endpoint)
    print(f"alarms for endpoint {endpoint}: {', '.join(names)}"
          + (f" (notifying {args.sns_topic})" if args.sns_topic else ""))
    print(f"dashboard: https://{ctx.region}.console.aws.amazon.com/cloudwatch/home?region="
          f"{ctx.region}#dashboards:name={dashboard_name(endpoint)}")
    return 0
