"""deploy.py update and rollback: a new model version cloned from the endpoint's current one,
deployed with SageMaker's deployment guardrails (each strategy's UpdateEndpoint payload), watched
to its end (an alarm set to ALARM while the update waits rolls it back), idempotent, refused in
one line before any AWS call, and tagged so that update keeps two versions and delete removes
them all. moto 5.2.5 has no UpdateEndpoint: tests/deployment/fake_guardrails.py plays
SageMaker's side; botocore validates every request first."""

from __future__ import annotations

import json

import boto3
import pytest

from deployment import guardrails, versions
from tests.conftest import ARTIFACTS
from tests.deployment.conftest import M1, M2, REGION, ROLE, endpoint, run

ALARMS = [{"AlarmName": "dogs-ep-error-rate"}, {"AlarmName": "dogs-ep-latency-p99"}]


def sm():
    return boto3.client("sagemaker", region_name=REGION)


def tags_of(arn: str) -> dict:
    return {t["Key"]: t["Value"] for t in sm().list_tags(ResourceArn=arn)["Tags"]}


def serving(name="dogs-ep") -> str:
    return sm().describe_endpoint(EndpointName=name)["EndpointConfigName"]


def model_of(config: str) -> str:
    (variant,) = sm().describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    return variant["ModelName"]


# ------------------------------------------------------------------ each strategy's payload
def blue_green(routing: dict, timeout: int, baking: int = 300) -> dict:
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                      "TerminationWaitInSeconds": baking,
                                      "MaximumExecutionTimeoutInSeconds": timeout},
            "AutoRollbackConfiguration": {"Alarms": ALARMS}}


STRATEGIES = {
    "all-at-once (auto on 1 instance)": (
        1, [], blue_green({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}, 2100)),
    "canary (auto on 4 instances: one instance)": (
        4, [], blue_green({"Type": "CANARY", "WaitIntervalInSeconds": 300,
                           "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}}, 2400)),
    "canary of 25 %, 10 min baking it": (
        4, ["--canary-percent", "25", "--wait-interval", "600", "--baking", "900"],
        blue_green({"Type": "CANARY", "WaitIntervalInSeconds": 600,
                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}}, 3300, 900)),
    "linear (a quarter of the fleet)": (
        4, ["--strategy", "linear"],
        blue_green({"Type": "LINEAR", "WaitIntervalInSeconds": 300,
                    "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1}}, 3300)),
    "linear steps of 20 %": (
        10, ["--linear-step-percent", "20", "--timeout", "7200"],
        blue_green({"Type": "LINEAR", "WaitIntervalInSeconds": 300,
                    "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 20}}, 7200)),
    "rolling batches of 25 %": (
        4, ["--strategy", "rolling", "--batch-percent", "25", "--wait-interval", "120"],
        {"RollingUpdatePolicy": {"MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                                 "WaitIntervalInSeconds": 120,
                                 "MaximumExecutionTimeoutInSeconds": 2280},
         "AutoRollbackConfiguration": {"Alarms": ALARMS}}),
}


@pytest.mark.parametrize("case", STRATEGIES)
def test_each_strategy_sends_its_deployment_config_and_keeps_the_endpoints_shape(
        fake, aws, capsys, case):
    count, options, payload = STRATEGIES[case]
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", str(count),
             "--capture", "10", "--workers", "2")
    old = serving()
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep", *options)
    assert code == 0, out + err
    update = aws.one("UpdateEndpoint")
    new = update["EndpointConfigName"]
    assert update == {"EndpointName": "dogs-ep", "EndpointConfigName": new,
                      "DeploymentConfig": payload}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"update-payload-{case.split()[0]}-{len(options)}.json").write_text(
        json.dumps({"case": case, "UpdateEndpoint": update}, indent=1))
    first, second = aws.calls[("sagemaker", "CreateEndpointConfig")]
    (variant,) = second["ProductionVariants"]
    (before,) = first["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.xlarge" and variant["InitialInstanceCount"] == count
    assert variant["VariantName"] == before["VariantName"] == "AllTraffic"
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == before[
        "ContainerStartupHealthCheckTimeoutInSeconds"]  # kept
    assert second["DataCaptureConfig"]["InitialSamplingPercentage"] == 10  # kept
    model = aws.calls[("sagemaker", "CreateModel")][1]
    assert model["PrimaryContainer"]["ModelDataUrl"] == M2 and model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "2"
    assert variant["ModelName"] == model["ModelName"] == new
    assert serving() == new
    assert f"endpoint dogs-ep: {old} -> {new}" in out and "rolls back on dogs-ep-error-rate, " \
        "dogs-ep-latency-p99" in out
    assert "Updating: " in out and "Baking" in out
    assert f"kept 2 version(s) of dogs-ep: {new} (serving), {old} (python deploy.py rollback " \
           "goes back to it)" in out
    config_arn = sm().describe_endpoint_config(EndpointConfigName=new)["EndpointConfigArn"]
    assert tags_of(config_arn) == {versions.TAG_ENDPOINT: "dogs-ep", versions.TAG_PREVIOUS: old}
    model_arn = sm().describe_model(ModelName=new)["ModelArn"]
    assert tags_of(model_arn) == {versions.TAG_ENDPOINT: "dogs-ep"}


def test_a_serverless_endpoint_updates_all_at_once_and_keeps_its_memory(fake, aws, capsys):
    endpoint(capsys, "--serverless", "--memory-mb", "4096")
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                         "--serverless-concurrency", "8")
    assert code == 0, err
    assert aws.one("UpdateEndpoint")["DeploymentConfig"] == blue_green(
        {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}, 2100)
    (variant,) = aws.calls[("sagemaker", "CreateEndpointConfig")][1]["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 8}
    assert "InstanceType" not in variant and "serverless, 4096 MB" in out


# ------------------------------------------------------------------ a rollback run
def test_an_alarm_that_fires_while_the_canary_bakes_rolls_the_update_back(fake, aws, capsys):
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "4")
    old = serving()
    cw = boto3.client("cloudwatch", region_name=REGION)
    fake.at_poll(4, lambda: cw.set_alarm_state(  # the canary has baked one poll
        AlarmName="dogs-ep-error-rate", StateValue="ALARM",
        StateReason="Threshold Crossed: 3 datapoints [0.31, 0.28, 0.3] were greater than 0.05"))
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "update-rollback-run.txt").write_text(out + err)
    new = aws.one("UpdateEndpoint")["EndpointConfigName"]
    assert code == 2, out + err
    assert serving() == old
    assert "ActivatingTraffic (canary)" in out and "Baking (baking the canary)" in out
    assert "alarm dogs-ep-error-rate is ALARM: Threshold Crossed" in out
    assert out.index("Baking (baking the canary)") < out.index("RollingBack: ")
    assert f"rolled back to {old}: alarm dogs-ep-error-rate (Threshold Crossed" in out
    # The rolled-back version is removed, the one serving is kept.
    assert f"deleted endpoint config {new}" in out and f"deleted model {new}" in out
    assert f"kept 1 version(s) of dogs-ep: {old} (serving)" in out
    names = [c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]]
    assert names == [old]


def test_an_update_still_running_past_its_limit_exits_3_and_prunes_nothing(fake, aws, capsys):
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "2")
    fake.stall = True
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 3, out + err
    assert "is still Updating after" in out and "past the deployment's time limit" in out
    assert len(sm().list_endpoint_configs()["EndpointConfigs"]) == 2


# ------------------------------------------------------------------ idempotence
def test_the_same_update_twice_changes_nothing_the_second_time(fake, aws, capsys):
    endpoint(capsys)
    assert run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")[0] == 0
    calls = {op: len(aws.calls[("sagemaker", op)]) for op in
             ("CreateModel", "CreateEndpointConfig", "UpdateEndpoint", "DeleteModel")}
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 0, err
    assert "already runs " + M2 in out and "nothing done" in out
    assert calls == {op: len(aws.calls[("sagemaker", op)]) for op in calls}
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                         "--workers", "3")  # a changed setting is an update
    assert code == 0 and "nothing done" not in out, err


def test_a_new_image_under_the_same_tag_is_an_update_even_with_the_same_model(fake, aws,
                                                                              capsys):
    endpoint(capsys)
    assert run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")[0] == 0
    manifest = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {}, "layers": [{"digest": "sha256:" + "1" * 64}]})
    boto3.client("ecr", region_name=REGION).put_image(
        repositoryName="sagemaker-dog-breeds", imageManifest=manifest, imageTag="latest")
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 0, out + err
    assert "nothing done" not in out and len(aws.calls[("sagemaker", "UpdateEndpoint")]) == 2


# ------------------------------------------------------------------ refusals
REFUSALS = [
    (["--strategy", "canary", "--instance-count", "1"],
     "--strategy canary on 1 instance: a canary is at most half of the instances, so it needs 2 "
     "or more; pass --instance-count 2 or more, or --strategy all-at-once"),
    (["--linear-step-percent", "60"],
     "--linear-step-percent 60: each linear step is 10 to 50 % of the instances (LinearStepSize)"),
    (["--strategy", "canary", "--instance-count", "4", "--wait-interval", "600", "--timeout",
      "700"],
     "--timeout 700: the deployment's limit must be longer than the waits it covers "
     "(--wait-interval 600 + --baking 300 = 900 s; MaximumExecutionTimeoutInSeconds)"),
    (["--serverless", "--strategy", "rolling"],
     "--strategy rolling on a serverless endpoint: SageMaker cannot roll serverless or "
     "multi-variant endpoints; use --strategy all-at-once"),
    (["--serverless", "--canary-percent", "10"],
     "--canary-percent 10 on a serverless endpoint: its sizes count instances and a serverless "
     "endpoint has none; use --strategy all-at-once"),
    (["--canary-percent", "60"],
     "--canary-percent 60: a canary is 1 to 50 % of the instances (CanarySize, at most half the "
     "fleet)"),
    (["--batch-percent", "3"],
     "--batch-percent 3: each rolling batch is 5 to 50 % of the instances (RollingUpdatePolicy "
     "MaximumBatchSize)"),
    (["--wait-interval", "4000"], "--wait-interval 4000: 0 to 3600 s (WaitIntervalInSeconds)"),
    (["--baking", "-1"], "--baking -1: 0 to 3600 s (TerminationWaitInSeconds)"),
    (["--timeout", "300"], "--timeout 300: 600 to 28800 s (MaximumExecutionTimeoutInSeconds)"),
    (["--strategy", "rolling", "--instance-count", "8", "--batch-percent", "5",
      "--wait-interval", "1500"],
     "--wait-interval/--baking: the waits (20 x --wait-interval 1500 = 30000 s) reach "
     "SageMaker's longest deployment (28800 s, MaximumExecutionTimeoutInSeconds); wait less or "
     "take bigger steps"),
    (["--strategy", "linear", "--batch-percent", "10"],
     "--batch-percent applies to --strategy rolling, not linear"),
    (["--strategy", "rolling", "--baking", "60"],
     "--baking: a rolling update bakes each batch for --wait-interval; the final baking period "
     "(TerminationWaitInSeconds) is for all-at-once, canary and linear"),
    (["--strategy", "all-at-once", "--wait-interval", "60"],
     "--wait-interval: all-at-once shifts traffic in one step, with no wait between steps; its "
     "baking period is --baking"),
    (["--instance-count", "1", "--wait-interval", "60"],
     "--wait-interval: 1 instance gets an all-at-once update (a canary needs 2 or more "
     "instances), which shifts traffic in one step, with no wait between steps; its baking "
     "period is --baking"),
    ([f"--alarm=a{i}" for i in range(11)],
     "--alarm: 11 alarms, SageMaker rolls back on at most 10 (AutoRollbackConfiguration)"),
    (["--alarm", "mine", "--no-rollback"],
     "--alarm and --no-rollback exclude each other: pick one"),
    (["--serverless", "--instance-type", "ml.m5.xlarge"],
     "--instance-type and --serverless exclude each other: a serverless endpoint has no "
     "instances"),
    (["--instance-type", "ml.p3.2xlarge"],
     "ml.p3.2xlarge has NVIDIA V100 GPUs (compute capability 7.0), for which the image's CUDA 13 "
     "build of torch has no kernels (sm_75 sm_80 sm_86 sm_90 sm_100 sm_120): pick ml.g4dn, "
     "ml.g5, ml.p4d, ml.p4de, ml.g6, ml.g6e, ml.p5, ml.p5e, ml.p5en, ml.p6-b200, ml.p6-b300, "
     "ml.g7, ml.g7e, or a CPU instance type"),
    (["--max-batch-size", "0"], "--max-batch-size 0: SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE='0' "
     "must be at least 1; the endpoint's container would refuse to start"),
    (["--capture", "0"], "--capture 0: a percentage of requests from 1 to 100"),
]


@pytest.mark.parametrize("options, line", REFUSALS)
def test_a_broken_rule_is_one_line_before_any_aws_call_even_without_credentials(
        no_credentials, capsys, options, line):
    code, out, err = run(capsys, "update", "--model-data", M2, *options)
    assert (code, err) == (1, f"error: {line}\n")


@pytest.mark.parametrize("options, line", [r for r in REFUSALS if "--instance" not in
                                           " ".join(r[0]) and "--serverless" not in r[0]
                                           and "--max-batch-size" not in r[0]
                                           and "--capture" not in r[0]])
def test_rollback_refuses_the_same_strategy_options_without_credentials(no_credentials, capsys,
                                                                       options, line):
    code, out, err = run(capsys, "rollback", *options)
    assert (code, err) == (1, f"error: {line}\n")


def test_the_refusals_reach_no_aws_even_with_credentials(aws, capsys):
    for options, _ in REFUSALS:
        assert run(capsys, "update", "--model-data", M2, *options)[0] == 1
    assert not aws.calls


def test_a_rule_that_needs_the_endpoints_count_is_checked_before_anything_is_made(
        fake, aws, capsys):
    endpoint(capsys)  # 1 instance
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                         "--strategy", "rolling")
    assert (code, err) == (1, "error: --strategy rolling on 1 instance: each rolling batch is at "
                              "most half of the instances, so it needs 2 or more; pass "
                              "--instance-count 2 or more, or --strategy all-at-once\n")
    assert len(aws.calls[("sagemaker", "CreateModel")]) == 1  # deploy's, none of update's
    assert not aws.calls[("sagemaker", "UpdateEndpoint")]


def test_without_alarms_or_with_one_firing_the_update_is_refused_before_anything_is_made(
        fake, aws, capsys):
    endpoint(capsys, monitor=False)
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 1 and "no alarms to roll back on: endpoint dogs-ep has none from deploy.py " \
        "monitor (dogs-ep-error-rate, dogs-ep-latency-p99); run python deploy.py monitor first" \
        in err
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                       "--alarm", "nope")
    assert code == 1 and "--alarm nope: no such CloudWatch alarm in us-east-1" in err
    assert run(capsys, "monitor", "--endpoint", "dogs-ep")[0] == 0
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName="dogs-ep-latency-p99", StateValue="ALARM", StateReason="slow")
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 1 and "alarm dogs-ep-latency-p99 is in ALARM now, so SageMaker would roll " \
        "the update back at once" in err
    assert len(aws.calls[("sagemaker", "CreateModel")]) == 1 and not aws.calls[
        ("sagemaker", "UpdateEndpoint")]
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                         "--no-rollback")
    assert code == 0, out + err
    assert "AutoRollbackConfiguration" not in aws.one("UpdateEndpoint")["DeploymentConfig"]
    assert "no automatic rollback" in out


def test_a_failed_start_or_a_value_botocore_refuses_leaves_nothing_behind(fake, aws, capsys):
    endpoint(capsys, "--serverless")
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                       "--memory-mb", "512")
    assert code == 1 and "AWS rejected a parameter before sending it" in err and "MemorySizeInMB" \
        in err
    assert len(aws.calls[("sagemaker", "CreateModel")]) == 1  # validated before any create
    fake.fail_next_update = "Cannot update in-progress endpoint"
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 1 and "UpdateEndpoint failed (ValidationException)" in err
    made = aws.calls[("sagemaker", "CreateModel")][1]["ModelName"]
    assert f"deleted endpoint config {made} (this update did not start)" in out
    assert f"deleted model {made} (this update did not start)" in out
    assert [m["ModelName"] for m in sm().list_models()["Models"]] == [
        aws.calls[("sagemaker", "CreateModel")][0]["ModelName"]]


# ------------------------------------------------------------------ versions, rollback, delete
def test_update_keeps_two_versions_rollback_goes_back_and_forth_and_delete_removes_them_all(
        fake, aws, capsys):
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "2")
    first = serving()
    made = [first]
    for n in (2, 3, 4):
        code, out, err = run(capsys, "update", "--model-data", M2.replace("dogs-2", f"dogs-{n}"),
                             "--endpoint", "dogs-ep")
        assert code == 0, out + err
        made.append(serving())
    configs = {c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]}
    assert configs == set(made[-2:])  # the one serving and the one before it
    assert {m["ModelName"] for m in sm().list_models()["Models"]} == set(made[-2:])
    assert f"deleted endpoint config {made[1]}" in out and f"deleted model {made[1]}" in out

    code, out, err = run(capsys, "rollback", "--endpoint", "dogs-ep", "--strategy", "linear",
                         "--wait-interval", "60")
    assert code == 0, out + err
    rollback = aws.calls[("sagemaker", "UpdateEndpoint")][-1]
    back = rollback["EndpointConfigName"]
    assert back not in made and rollback["DeploymentConfig"][
        "BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "LINEAR", "WaitIntervalInSeconds": 60,
        "LinearStepSize": {"Type": "INSTANCE_COUNT", "Value": 1}}
    assert serving() == back and model_of(back) == made[-2]  # the previous version's model
    assert f"kept 2 version(s) of dogs-ep: {back} (serving), {made[-1]} (python deploy.py " \
           "rollback goes back to it)" in out
    assert run(capsys, "rollback", "--endpoint", "dogs-ep")[0] == 0  # and forward again
    forward = serving()
    assert model_of(forward) == made[-1]
    configs = {c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]}
    assert configs == {back, forward}
    assert {m["ModelName"] for m in sm().list_models()["Models"]} == set(made[-2:])

    # Resources deploy.py did not make, named alike: an untagged model, another endpoint's.
    client = sm()
    container = {"Image": "x", "ModelDataUrl": M1}
    client.create_model(ModelName="dogs-ep-by-hand", PrimaryContainer=container,
                        ExecutionRoleArn=ROLE)
    client.create_model(ModelName="dogs-ep-2-model", PrimaryContainer=container,
                        ExecutionRoleArn=ROLE, Tags=versions.tags("dogs-ep-2"))
    code, out, err = run(capsys, "delete", "--endpoint", "dogs-ep")
    assert code == 0, err
    for config, model in ((back, made[-2]), (forward, made[-1])):
        assert f"deleted endpoint config {config}" in out and f"deleted model {model}" in out
    assert {m["ModelName"] for m in client.list_models()["Models"]} == {"dogs-ep-by-hand",
                                                                         "dogs-ep-2-model"}
    assert client.list_endpoint_configs()["EndpointConfigs"] == []
    code, out, err = run(capsys, "delete", "--endpoint", "dogs-ep")
    assert code == 0 and "endpoint dogs-ep: already gone" in out


def test_rollback_keeps_the_instances_autoscaling_added(fake, aws, capsys):
    """Issue 36 (1): deployed on 2, updated, autoscaled to 6, updated again: the rollback
    deploys the previous model on the 6 instances serving, not the 2 its config recorded."""
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "2")
    assert run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")[0] == 0
    previous = model_of(serving())
    fake.scale("dogs-ep", 6)
    code, out, err = run(capsys, "update", "--model-data", M2.replace("dogs-2", "dogs-3"),
                         "--endpoint", "dogs-ep")
    assert code == 0, out + err
    fake.scale("dogs-ep", 6)
    code, out, err = run(capsys, "rollback", "--endpoint", "dogs-ep")
    assert code == 0, out + err
    (live,) = sm().describe_endpoint(EndpointName="dogs-ep")["ProductionVariants"]
    assert live["CurrentInstanceCount"] == 6  # 2 before the fix
    clone = aws.calls[("sagemaker", "CreateEndpointConfig")][-1]
    (variant,) = clone["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 6 and variant["ModelName"] == previous
    assert serving() == clone["EndpointConfigName"]
    assert "canary of 1 instance of 6" in out, out


def test_a_second_update_started_before_the_first_prunes_keeps_its_version(fake, aws, capsys):
    """Issue 36 (2): update A ends; before A prunes, update B starts (--no-wait). A removes
    only versions older than the one it replaced: B's config and model stay while SageMaker
    deploys them."""
    import deploy

    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "2")
    first = serving()
    assert run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")[0] == 0
    replaced = serving()
    started = []

    def update_b(**_):
        if not started:
            started.append(True)
            assert deploy.main(["update", "--model-data", M2.replace("dogs-2", "dogs-b"),
                                "--endpoint", "dogs-ep", "--no-wait"]) == 0

    aws.session.events.register("before-call.sagemaker.ListEndpointConfigs", update_b)
    code, out, err = run(capsys, "update", "--model-data", M2.replace("dogs-2", "dogs-a"),
                         "--endpoint", "dogs-ep")
    assert code == 0 and started, out + err
    a, b = [c["EndpointConfigName"] for c in aws.calls[("sagemaker", "UpdateEndpoint")][-2:]]
    desc = aws.session.client("sagemaker").describe_endpoint(EndpointName="dogs-ep")
    assert desc["PendingDeploymentSummary"]["EndpointConfigName"] == b  # B deploys
    configs = {c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]}
    models = {m["ModelName"] for m in sm().list_models()["Models"]}
    assert configs == models == {replaced, a, b}  # first (older than replaced) went
    assert f"deleted endpoint config {first}" in out


def test_an_update_whose_answer_was_lost_follows_what_sagemaker_took(fake, aws, capsys):
    """Issue 36 (2): UpdateEndpoint reached SageMaker but its answer was lost, and the retry
    was refused: the new version is deployed, so it is followed, not deleted."""
    endpoint(capsys)
    fake.lose_next_answer = True
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep")
    assert code == 0, out + err
    new = aws.calls[("sagemaker", "UpdateEndpoint")][-1]["EndpointConfigName"]
    assert f"endpoint dogs-ep deploys {new}: following it" in out
    assert "did not start" not in out and serving() == new
    assert model_of(new) == new


def test_rollback_needs_a_recorded_previous_version(fake, aws, capsys):
    endpoint(capsys)
    code, _, err = run(capsys, "rollback", "--endpoint", "dogs-ep")
    assert code == 1 and "records no previous version" in err
    assert not aws.calls[("sagemaker", "UpdateEndpoint")]


def test_deploy_tags_the_model_config_and_endpoint_with_the_endpoint(aws, capsys):
    endpoint(capsys, monitor=False)
    client = sm()
    config = client.describe_endpoint_config(EndpointConfigName="dogs-ep")
    (variant,) = config["ProductionVariants"]
    for arn in (config["EndpointConfigArn"],
                client.describe_model(ModelName=variant["ModelName"])["ModelArn"],
                client.describe_endpoint(EndpointName="dogs-ep")["EndpointArn"]):
        assert tags_of(arn)[versions.TAG_ENDPOINT] == "dogs-ep", arn


def test_the_rules_constants_are_botocores_limits():
    model = boto3.client("sagemaker", region_name=REGION).meta.service_model

    def limits(shape):
        meta = model.shape_for(shape).metadata
        return meta["min"], meta["max"]

    assert limits("WaitIntervalInSeconds") == guardrails.WAIT_RANGE_S
    assert limits("TerminationWaitInSeconds") == guardrails.WAIT_RANGE_S
    assert limits("MaximumExecutionTimeoutInSeconds") == guardrails.TIMEOUT_RANGE_S
    assert model.shape_for("AlarmList").metadata["max"] == guardrails.MAX_ALARMS
    assert model.shape_for("TrafficRoutingConfigType").enum == ["ALL_AT_ONCE", "CANARY", "LINEAR"]
    assert [s.replace("-", "_").upper() for s in guardrails.STRATEGIES[1:4]] == \
        model.shape_for("TrafficRoutingConfigType").enum


def test_a_serverless_endpoint_moves_to_instances_when_the_options_say_so(fake, aws, capsys):
    endpoint(capsys, "--serverless")
    code, out, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                         "--instance-type", "ml.m5.xlarge", "--instance-count", "2")
    assert code == 0, out + err
    (variant,) = aws.calls[("sagemaker", "CreateEndpointConfig")][1]["ProductionVariants"]
    assert "ServerlessConfig" not in variant
    assert (variant["InstanceType"], variant["InitialInstanceCount"],
            variant["ContainerStartupHealthCheckTimeoutInSeconds"]) == ("ml.m5.xlarge", 2, 600)
    assert aws.one("UpdateEndpoint")["DeploymentConfig"]["BlueGreenUpdatePolicy"][
        "TrafficRoutingConfiguration"]["Type"] == "CANARY"


def test_a_long_endpoint_name_still_finds_all_its_versions(fake, aws, capsys):
    name = "dogs-" + "x" * 50
    endpoint(capsys, name=name)
    for n in (2, 3, 4):
        code, out, err = run(capsys, "update", "--model-data", M2.replace("dogs-2", f"dogs-{n}"),
                             "--endpoint", name)
        assert code == 0, out + err
    assert all(len(m["ModelName"]) <= 63 for m in sm().list_models()["Models"])
    assert len(sm().list_endpoint_configs()["EndpointConfigs"]) == versions.KEEP
    assert run(capsys, "delete", "--endpoint", name)[0] == 0
    assert sm().list_models()["Models"] == [] and sm().list_endpoint_configs()[
        "EndpointConfigs"] == []


def test_an_instance_type_change_on_an_autoscaled_endpoint_is_refused_before_anything_is_made(
        fake, aws, capsys):
    """SageMaker refuses to change an autoscaled variant's instance type; the README promised
    the autoscaling stays. Refused in one line with the commands to use, nothing created; the
    same type updates."""
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", "--instance-count", "2",
             "--autoscale-max", "4")
    models_before = len(aws.calls[("sagemaker", "CreateModel")])
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                       "--instance-type", "ml.m5.2xlarge")
    assert code == 1, err
    assert ("--instance-type ml.m5.2xlarge: endpoint dogs-ep has autoscaling, and SageMaker "
            "refuses to change an autoscaled variant's instance type") in err
    assert "deregister-scalable-target --service-namespace sagemaker --resource-id " \
           "endpoint/dogs-ep/variant/AllTraffic" in err
    assert len(aws.calls[("sagemaker", "CreateModel")]) == models_before
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "dogs-ep",
                       "--instance-type", "ml.m5.xlarge", "--no-wait")
    assert code == 0, err  # the same type: autoscaling stays


def test_an_instance_type_change_without_autoscaling_updates(fake, aws, capsys):
    endpoint(capsys, "--instance-type", "ml.m5.xlarge", name="plain", monitor=False)
    code, _, err = run(capsys, "update", "--model-data", M2, "--endpoint", "plain",
                       "--instance-type", "ml.m5.2xlarge", "--no-wait", "--no-rollback")
    assert code == 0, err
