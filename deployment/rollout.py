"""Running an endpoint update: UpdateEndpoint with a DeploymentConfig (through boto3: the SDK
2.x's ``update_endpoint`` does not pass one), then DescribeEndpoint polled until it ends, with a
line per change of the endpoint's state and traffic split and a line per alarm that fires.

Outcomes: the endpoint serves the new config (``DONE``), SageMaker rolled it back to the old
one (``ROLLED_BACK``: an alarm fired, or the deployment timed out or failed), or it is still
updating past our own limit (``TIMED_OUT``: SageMaker's time limit plus time for a rollback).
"""

from __future__ import annotations

import time

from deployment.errors import UserError

POLL_S = 30.0  # DescribeEndpoint every 30 s: a step takes minutes
ROLLBACK_ROOM_S = 1800  # after the deployment's own limit, time for SageMaker to roll back
DONE, ROLLED_BACK, TIMED_OUT, FAILED = "done", "rolled back", "timed out", "failed"
EXIT_CODES = {DONE: 0, FAILED: 1, ROLLED_BACK: 2, TIMED_OUT: 3}


def check_updatable(desc: dict) -> None:
    """Refuse an endpoint that is not InService (an update in progress, a failed endpoint).

    Raises:
        UserError: with what to do instead.
    """
    status, name = desc["EndpointStatus"], desc["EndpointName"]
    if status == "InService":
        return
    if status in ("Failed", "UpdateRollbackFailed"):
        raise UserError(f"endpoint {name} is {status} ({desc.get('FailureReason', 'no reason')})"
                        ": delete it (python deploy.py delete) and deploy again")
    raise UserError(f"endpoint {name} is {status}, not InService: wait until it is (its update "
                    "goes on in SageMaker), then run this again")


def start(sm, endpoint: str, config: str, deployment_config: dict) -> None:
    """UpdateEndpoint to ``config`` with ``deployment_config`` (blue/green or rolling, with
    AutoRollbackConfiguration)."""
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config,
                       DeploymentConfig=deployment_config)


def _fleet(variants: list[dict]) -> str:
    """A fleet in words: per variant, its instances (now/desired), weight and stage."""
    parts = []
    for v in variants:
        if "CurrentServerlessConfig" in v or "DesiredServerlessConfig" in v:
            words = [f"{v['VariantName']} serverless"]
        else:
            count, desired = v.get("CurrentInstanceCount"), v.get("DesiredInstanceCount")
            shown = f"{count}/{desired}" if desired not in (None, count) else f"{count}"
            words = [f"{v['VariantName']} {shown} instances"]
        if v.get("CurrentWeight") is not None:
            words.append(f"weight {v['CurrentWeight']:g}")
        words += [s["Status"] + (f" ({s['StatusMessage']})" if s.get("StatusMessage") else "")
                  for s in v.get("VariantStatus", [])]
        parts.append(", ".join(words))
    return "; ".join(parts)


def describe_line(desc: dict) -> str:
    """The endpoint's state and traffic split in one line: the config serving and its fleet,
    and while a deployment runs, the new config's fleet (instances, weight, stage)."""
    line = (f"{desc['EndpointStatus']}: {desc.get('EndpointConfigName')} "
            f"[{_fleet(desc.get('ProductionVariants', []))}]")
    pending = desc.get("PendingDeploymentSummary")
    if pending:
        line += (f" -> {pending['EndpointConfigName']} "
                 f"[{_fleet(pending.get('ProductionVariants', []))}]")
    return line


def _alarms_in_alarm(cw, alarms: list[str]) -> dict[str, str]:
    """Alarm name -> its StateReason, for those of ``alarms`` in state ALARM."""
    if not alarms:
        return {}
    found = cw.describe_alarms(AlarmNames=alarms, AlarmTypes=["MetricAlarm", "CompositeAlarm"])
    return {a["AlarmName"]: a.get("StateReason", "") for a in
            found.get("MetricAlarms", []) + found.get("CompositeAlarms", [])
            if a["StateValue"] == "ALARM"}


def watch(sm, cw, endpoint: str, config: str, alarms: list[str], limit_s: float,
          out=print) -> str:
    """Poll the endpoint every POLL_S until its deployment to ``config`` ends or ``limit_s``
    passes; print a line (minutes:seconds since the start) whenever its state or traffic split
    changes or one of ``alarms`` fires. Returns DONE, ROLLED_BACK, FAILED or TIMED_OUT."""
    start_at, last, fired = time.monotonic(), None, {}
    while True:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        elapsed = time.monotonic() - start_at
        stamp = f"{int(elapsed // 60):3d}:{int(elapsed % 60):02d}"
        for name, reason in _alarms_in_alarm(cw, alarms).items():
            if name not in fired:
                fired[name] = reason
                out(f"{stamp}  alarm {name} is ALARM: {reason}")
        line = describe_line(desc)
        if line != last:
            out(f"{stamp}  {line}")
            last = line
        status = desc["EndpointStatus"]
        if status == "InService" and not desc.get("PendingDeploymentSummary"):
            if desc.get("EndpointConfigName") == config:
                return DONE
            why = ", ".join(f"alarm {n} ({r})" if r else f"alarm {n}" for n, r in fired.items())
            out(f"rolled back to {desc.get('EndpointConfigName')}: "
                + (why or desc.get("FailureReason") or "SageMaker gave no reason"))
            return ROLLED_BACK
        if status in ("Failed", "UpdateRollbackFailed", "OutOfService"):
            out(f"endpoint {endpoint} is {status}: {desc.get('FailureReason', 'no reason given')}")
            return FAILED
        if elapsed > limit_s:
            out(f"endpoint {endpoint} is still {status} after {stamp.strip()}, past the "
                "deployment's time limit; it goes on in SageMaker (nothing pruned)")
            return TIMED_OUT
        time.sleep(POLL_S)
