"""What the endpoint's monitoring shows and alarms on, in one place: ``deploy.py monitor`` puts it
into CloudWatch (alarms and a dashboard, deployment/cloudwatch.py) and ``tools/metrics_page.py``
draws the same panels from a serve log.

The metrics are the ones serve writes in CloudWatch's Embedded Metric Format (serve/metrics.py),
in the namespace ``NAMESPACE`` with the dimensions EndpointName, VariantName and ModelVersion.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.drift import METRIC_NAMES, PSI_ALERT
from serve.settings_table import METRICS_NAMESPACE as NAMESPACE  # noqa: F401 - for the monitor verb

PERIOD_S = 60
DRIFT_STATISTICS = tuple(METRIC_NAMES.values())  # serve's names: PredictedClass, AspectRatio...


@dataclass(frozen=True)
class Alarm:
    """One CloudWatch alarm: ``metric`` (a serve metric, or an expression of them),
    ``threshold``, ``statistic`` over the period, what it means and what to do when it fires."""

    suffix: str
    metric: str
    threshold: float
    statistic: str
    meaning: str
    action: str
    expression: str | None = None  # metric math over Invocations and Invocation5XXErrors


# The alarms an endpoint update rolls back on (deploy.py update): a new model's own failures.
ROLLBACK_ALARMS = ("error-rate", "latency-p99")


# Jobs waiting in a worker's queue: half the CPU default of its bound
# (SAGEMAKER_MODEL_SERVER_MAX_QUEUE, 32), past which the worker answers 503s.
QUEUE_DEPTH = 16


def alarms(latency_p99_ms: float, error_rate: float, queue_depth: float = QUEUE_DEPTH
           ) -> list[Alarm]:
    """The endpoint's alarms: p99 latency, server error rate, a worker's queue depth, and each
    drift score."""
    out = [
        Alarm("latency-p99", "LatencyP99", latency_p99_ms, "Maximum",
              f"a worker's p99 latency was over {latency_p99_ms:g} ms for 3 minutes",
              "add instances (autoscaling) or workers; check QueueWait against ForwardTime"),
        Alarm("error-rate", "ErrorRate", error_rate, "Maximum",
              f"over {error_rate:.0%} of invocations answered 5xx for 3 minutes",
              "read the endpoint's log for the tracebacks; roll back the model if it is new",
              expression="IF(invocations > 0, errors / invocations, 0)"),
        Alarm("queue-depth", "QueueDepthMax", queue_depth, "Maximum",
              f"a worker's queue held over {queue_depth:g} waiting jobs for 3 minutes",
              "add instances (autoscaling's maximum) before the queue's bound answers 503s"),
    ]
    for statistic in DRIFT_STATISTICS:
        out.append(Alarm(
            f"drift-{statistic.lower()}", f"DriftPSI{statistic}", PSI_ALERT, "Maximum",
            f"the {statistic} distribution of the last images moved from the training "
            f"baseline (PSI over {PSI_ALERT})",
            "look at recent inputs (data capture) and confidence; retrain on them if the "
            "shift is real"))
    return out


# The dashboard's panels: a title and the metrics on it (name, statistic).
PANELS = [
    ("Invocations and errors", [("Invocations", "Sum"), ("Invocation4XXErrors", "Sum"),
                                ("Invocation5XXErrors", "Sum")]),
    ("Latency (ms)", [("LatencyP50", "Maximum"), ("LatencyP90", "Maximum"),
                      ("LatencyP99", "Maximum")]),
    ("Where the time goes, p50 (ms)", [("DecodeTimeP50", "Maximum"), ("QueueWaitP50", "Maximum"),
                                       ("ForwardTimeP50", "Maximum")]),
    ("Batching", [("BatchSizeMean", "Average"), ("ImagesPerRequestMean", "Average")]),
    ("Queue depth (jobs waiting in a worker)", [("QueueDepthMax", "Maximum")]),
    ("Model confidence", [("ConfidenceMean", "Average"), ("ConfidenceP10", "Average")]),
    ("Drift (PSI against the training baseline)",
     [(f"DriftPSI{s}", "Maximum") for s in DRIFT_STATISTICS]),
]
