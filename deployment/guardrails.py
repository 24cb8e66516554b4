"""SageMaker's deployment guardrails, as ``update`` and ``rollback`` ask for them: the strategy
options, their rules, and the UpdateEndpoint ``DeploymentConfig`` they make. No AWS call: every
rule is checked on the workstation, the ones that depend on the instance count as soon as the
count is known (from ``--instance-count``, else from the endpoint).

The rules (SageMaker developer guide, "Deployment guardrails", and the API reference of
BlueGreenUpdatePolicy, TrafficRoutingConfig and RollingUpdatePolicy; the ranges are botocore's
service model's, which tests/deployment/test_update.py checks these constants against):
a canary is at most 50 % of the instances, a linear step 10 to 50 %, a rolling batch 5 to 50 %;
waits and the final baking period 0 to 3600 s; the deployment's time limit 600 to 28,800 s and
longer than its waits; at most 10 alarms; serverless and multi-variant endpoints cannot roll.
Sizes count instances, so a canary, a linear step or a rolling batch needs 2 or more instances
and has no meaning on a serverless endpoint (our rule: AWS states sizes only in instances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployment.errors import UserError

STRATEGIES = ("auto", "all-at-once", "canary", "linear", "rolling")
WAIT_RANGE_S = (0, 3600)  # WaitIntervalInSeconds, TerminationWaitInSeconds
TIMEOUT_RANGE_S = (600, 28800)  # MaximumExecutionTimeoutInSeconds
CANARY_PERCENT = (1, 50)
LINEAR_PERCENT = (10, 50)
ROLLING_PERCENT = (5, 50)
MAX_ALARMS = 10  # AutoRollbackConfiguration.Alarms
DEFAULT_WAIT_S = 300  # a baking period long enough for the alarms' three 1-minute datapoints
DEFAULT_BAKING_S = 300
PROVISIONING_S = 1800  # the default time limit's room for starting the new instances
# Which strategy each size option belongs to.
SIZE_OPTIONS = {"canary": ("--canary-percent", "canary_percent"),
                "linear": ("--linear-step-percent", "linear_step_percent"),
                "rolling": ("--batch-percent", "batch_percent")}


@dataclass(frozen=True)
class StrategyOptions:
    """The strategy options as given (None: not given)."""

    strategy: str = "auto"
    canary_percent: int | None = None
    linear_step_percent: int | None = None
    batch_percent: int | None = None
    wait_interval_s: int | None = None
    baking_s: int | None = None
    timeout_s: int | None = None

    @classmethod
    def from_args(cls, args) -> "StrategyOptions":
        """The options of ``update``/``rollback`` (absent ones, as on ``deploy --update``, take
        their defaults)."""
        return cls(**{name: getattr(args, name, None) for name in (
            "canary_percent", "linear_step_percent", "batch_percent", "wait_interval_s",
            "baking_s", "timeout_s")}, strategy=getattr(args, "strategy", None) or "auto")


def add_strategy_arguments(p) -> None:
    """``--strategy`` and its options (update and rollback)."""
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="auto (default): canary on 2 or more instances, else all-at-once; "
                        "all-at-once, canary, linear: blue/green traffic shifting; rolling: "
                        "batches of instances replaced in place")
    p.add_argument("--canary-percent", type=int, metavar="P",
                   help="canary size, 1-50 %% of the instances (default: one instance)")
    p.add_argument("--linear-step-percent", type=int, metavar="P",
                   help="linear step, 10-50 %% of the instances (default: a quarter of them)")
    p.add_argument("--batch-percent", type=int, metavar="P",
                   help="rolling batch, 5-50 %% of the instances (default: a quarter of them)")
    p.add_argument("--wait-interval", dest="wait_interval_s", type=int, metavar="S",
                   help=f"baking after each traffic step or batch, 0-3600 s (default "
                        f"{DEFAULT_WAIT_S})")
    p.add_argument("--baking", dest="baking_s", type=int, metavar="S",
                   help="final baking before the old fleet goes (blue/green), 0-3600 s "
                        f"(default {DEFAULT_BAKING_S})")
    p.add_argument("--timeout", dest="timeout_s", type=int, metavar="S",
                   help="the deployment's limit, 600-28800 s and longer than its waits "
                        f"(default: the waits + {PROVISIONING_S})")
    p.add_argument("--alarm", action="append", default=[], metavar="NAME",
                   help="roll back when this CloudWatch alarm fires (repeatable), besides the "
                        "endpoint's error-rate and latency alarms from deploy.py monitor")
    p.add_argument("--no-rollback", action="store_true",
                   help="no alarms: nothing rolls the update back")


@dataclass(frozen=True)
class Plan:
    """A checked deployment: ``strategy`` (resolved), UpdateEndpoint's ``deployment_config``
    (without alarms), ``timeout_s`` (its MaximumExecutionTimeoutInSeconds) and ``summary``
    (one line)."""

    strategy: str
    deployment_config: dict
    timeout_s: int
    summary: str


def _in_range(option: str, value: int | None, low: int, high: int, rule: str) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"{option} {value}: {rule}")


def check_values(options: StrategyOptions, alarms: list[str] = ()) -> None:
    """The rules that need no instance count, so they hold before any AWS call.

    Raises:
        UserError: one line naming the option and the rule.
    """
    o = options
    _in_range("--canary-percent", o.canary_percent, *CANARY_PERCENT,
              "a canary is 1 to 50 % of the instances (CanarySize, at most half the fleet)")
    _in_range("--linear-step-percent", o.linear_step_percent, *LINEAR_PERCENT,
              "each linear step is 10 to 50 % of the instances (LinearStepSize)")
    _in_range("--batch-percent", o.batch_percent, *ROLLING_PERCENT,
              "each rolling batch is 5 to 50 % of the instances (RollingUpdatePolicy "
              "MaximumBatchSize)")
    _in_range("--wait-interval", o.wait_interval_s, *WAIT_RANGE_S,
              "0 to 3600 s (WaitIntervalInSeconds)")
    _in_range("--baking", o.baking_s, *WAIT_RANGE_S, "0 to 3600 s (TerminationWaitInSeconds)")
    _in_range("--timeout", o.timeout_s, *TIMEOUT_RANGE_S,
              "600 to 28800 s (MaximumExecutionTimeoutInSeconds)")
    if len(set(alarms)) > MAX_ALARMS:
        raise UserError(f"--alarm: {len(set(alarms))} alarms, SageMaker rolls back on at most "
                        f"{MAX_ALARMS} (AutoRollbackConfiguration)")
    implied = _implied(o)
    if len(implied) > 1:
        raise UserError(" and ".join(SIZE_OPTIONS[s][0] for s in implied)
                        + ": each belongs to another strategy; pick one")
    if implied and o.strategy != "auto" and implied[0] != o.strategy:
        raise UserError(f"{SIZE_OPTIONS[implied[0]][0]} applies to --strategy {implied[0]}, "
                        f"not {o.strategy}")
    if o.strategy != "auto" or implied:
        _check_waits(o.strategy if o.strategy != "auto" else implied[0], o, "")


def _check_waits(strategy: str, o: StrategyOptions, why: str) -> None:
    """The wait options the resolved ``strategy`` has (``why``: how it was chosen)."""
    if strategy == "rolling" and o.baking_s is not None:
        raise UserError("--baking: a rolling update bakes each batch for --wait-interval; the "
                        "final baking period (TerminationWaitInSeconds) is for all-at-once, "
                        "canary and linear")
    if strategy == "all-at-once" and o.wait_interval_s is not None:
        raise UserError(f"--wait-interval: {why or 'all-at-once'} shifts traffic in one step, "
                        "with no wait between steps; its baking period is --baking")


def _implied(o: StrategyOptions) -> list[str]:
    return [s for s, (_, name) in SIZE_OPTIONS.items() if getattr(o, name) is not None]


def _chosen_by(o: StrategyOptions, strategy: str) -> str:
    """The option that chose ``strategy``, as the user wrote it."""
    if o.strategy != "auto":
        return f"--strategy {strategy}"
    option, name = SIZE_OPTIONS[strategy]
    return f"{option} {getattr(o, name)}"


def plan(options: StrategyOptions, instance_count: int | None, serverless: bool = False,
         variants: int = 1) -> Plan:
    """The deployment for an endpoint of ``instance_count`` instances (None when serverless)
    and ``variants`` production variants.

    Raises:
        UserError: one line naming the option and the rule (check_values' rules included).
    """
    check_values(options)
    o = options
    strategy = o.strategy
    if strategy == "auto":
        implied = _implied(o)
        strategy = implied[0] if implied else (
            "canary" if not serverless and (instance_count or 0) >= 2 else "all-at-once")
        shape = "a serverless endpoint" if serverless else f"{instance_count} instance"
        _check_waits(strategy, o, f"{shape} gets an all-at-once update (a canary needs 2 or more "
                                  "instances), which")
    if strategy != "all-at-once":
        chosen = _chosen_by(o, strategy)
        if strategy == "rolling" and (serverless or variants > 1):
            kind = "a serverless endpoint" if serverless else f"an endpoint of {variants} variants"
            raise UserError(f"{chosen} on {kind}: SageMaker cannot roll serverless or "
                            "multi-variant endpoints; use --strategy all-at-once")
        if serverless:
            raise UserError(f"{chosen} on a serverless endpoint: its sizes count instances and a "
                            "serverless endpoint has none; use --strategy all-at-once")
        if instance_count < 2:
            what = {"canary": "a canary is at most half of the instances",
                    "linear": "each linear step is at most half of the instances",
                    "rolling": "each rolling batch is at most half of the instances"}[strategy]
            raise UserError(f"{chosen} on {instance_count} instance: {what}, so it needs 2 or "
                            "more; pass --instance-count 2 or more, or --strategy all-at-once")
    wait = o.wait_interval_s if o.wait_interval_s is not None else (
        0 if strategy == "all-at-once" else DEFAULT_WAIT_S)
    baking = o.baking_s if o.baking_s is not None else DEFAULT_BAKING_S
    size, steps, what = _size(strategy, o, instance_count)
    waits = steps * wait + (0 if strategy == "rolling" else baking)
    timeout = _timeout(o, strategy, steps, wait, baking, waits)
    if strategy == "rolling":
        config = {"RollingUpdatePolicy": {"MaximumBatchSize": size, "WaitIntervalInSeconds": wait,
                                          "MaximumExecutionTimeoutInSeconds": timeout}}
        summary = (f"rolling: batches of {what}, {wait} s baking each; the old instances go "
                   "batch by batch")
    else:
        routing = {"Type": strategy.upper().replace("-", "_"), "WaitIntervalInSeconds": wait}
        if strategy == "canary":
            routing["CanarySize"] = size
        elif strategy == "linear":
            routing["LinearStepSize"] = size
        config = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                            "TerminationWaitInSeconds": baking,
                                            "MaximumExecutionTimeoutInSeconds": timeout}}
        summary = {"all-at-once": "blue/green, all traffic at once",
                   "canary": f"blue/green canary of {what}, {wait} s baking it",
                   "linear": f"blue/green in linear steps of {what}, {wait} s baking each"
                   }[strategy] + f", {baking} s final baking"
    return Plan(strategy, config, timeout, f"{summary}; time limit {timeout} s")


def _size(strategy: str, o: StrategyOptions, n: int | None) -> tuple[dict | None, int, str]:
    """(CapacitySize, number of traffic steps, in words). Given as a percentage it stays one
    (SageMaker applies it to the fleet it has then, autoscaled or not); the defaults count
    instances: one for a canary, a quarter of the fleet (at least one) for steps and batches."""
    if strategy == "all-at-once":
        return None, 0, "all"
    if strategy == "canary":
        if o.canary_percent is None:
            return {"Type": "INSTANCE_COUNT", "Value": 1}, 1, f"1 instance of {n}"
        return ({"Type": "CAPACITY_PERCENT", "Value": o.canary_percent}, 1,
                f"{o.canary_percent} % of {n} instances")
    percent = o.linear_step_percent if strategy == "linear" else o.batch_percent
    if percent is None:
        k = max(1, math.ceil(n / 4))
        return {"Type": "INSTANCE_COUNT", "Value": k}, math.ceil(n / k), f"{k} of {n} instances"
    return ({"Type": "CAPACITY_PERCENT", "Value": percent}, math.ceil(100 / percent),
            f"{percent} % of {n} instances")


def _timeout(o: StrategyOptions, strategy: str, steps: int, wait: int, baking: int,
             waits: int) -> int:
    """The deployment's time limit: --timeout, checked to be longer than the waits, or the
    waits plus room to start the instances."""
    parts = []
    if steps:
        parts.append(f"{steps} x --wait-interval {wait}" if steps > 1 else
                     f"--wait-interval {wait}")
    if strategy != "rolling":
        parts.append(f"--baking {baking}")
    arithmetic = " + ".join(parts) + f" = {waits} s"
    if waits >= TIMEOUT_RANGE_S[1]:
        raise UserError(f"--wait-interval/--baking: the waits ({arithmetic}) reach SageMaker's "
                        f"longest deployment ({TIMEOUT_RANGE_S[1]} s, "
                        "MaximumExecutionTimeoutInSeconds); wait less or take bigger steps")
    if o.timeout_s is None:
        return min(TIMEOUT_RANGE_S[1], max(TIMEOUT_RANGE_S[0], waits + PROVISIONING_S))
    if o.timeout_s <= waits:
        raise UserError(f"--timeout {o.timeout_s}: the deployment's limit must be longer than "
                        f"the waits it covers ({arithmetic}; MaximumExecutionTimeoutInSeconds)")
    return o.timeout_s


def with_alarms(deployment_config: dict, alarms: list[str]) -> dict:
    """The DeploymentConfig with AutoRollbackConfiguration on ``alarms`` (none: no rollback)."""
    config = dict(deployment_config)
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config
