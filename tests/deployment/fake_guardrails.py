"""SageMaker's side of UpdateEndpoint with deployment guardrails, which moto 5.2.5 lacks.

botocore has validated each request against the service model by the time these handlers run
(``before-call`` comes after parameter validation). The fake then checks what SageMaker checks
(the endpoint is InService, the config exists and keeps the variant name; rolling is refused
on serverless), and walks the deployment's stages, one per DescribeEndpoint: the new fleet
Creating, each traffic step ActivatingTraffic then Baking, the final baking. At each poll it
reads the deployment's alarms from moto's CloudWatch; one in ALARM turns it into a rollback
(RollingBack, then InService on the old config), as SageMaker's auto-rollback does. Every answer
is validated against DescribeEndpoint's output shape, and names the image digest each fleet
was started with (DeployedImages), read from moto's ECR when the deployment starts. The stage model is ours, from the
developer guide's description; what is tested is deploy.py's side: the requests, the lines, the
exit codes and what is left behind.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from moto.sagemaker.models import sagemaker_backends

from tests.deployment.conftest import ACCOUNT, REGION


def _error(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": message}}, operation)


class FakeDeployments:
    """Registered on the recorder's session: UpdateEndpoint starts a deployment, DescribeEndpoint
    advances it. ``at_poll(n, action)`` runs ``action()`` before the n-th DescribeEndpoint
    (1-based) of the running deployment: an alarm set to ALARM while the update waits."""

    def __init__(self, session):
        self.backend = sagemaker_backends[ACCOUNT][REGION]
        self.cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        self.shape = boto3.client("sagemaker", region_name=REGION).meta.service_model \
            .operation_model("DescribeEndpoint").output_shape
        self.deployment: dict | None = None
        self.actions: dict[int, object] = {}
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.ecr = boto3.client("ecr", region_name=REGION)
        self.resolved: dict[str, str] = {}  # config -> the image digest its fleet was given
        self.fail_next_update: str | None = None
        # Start the next deployment, then answer with this error: a retried UpdateEndpoint
        # whose first answer was lost (the retry finds the endpoint updating).
        self.lose_next_answer = False
        self.stall = False  # never finish (a deployment past every limit)
        session.events.register("before-call.sagemaker.UpdateEndpoint", self.update)
        session.events.register("before-call.sagemaker.DescribeEndpoint", self.describe)

    def at_poll(self, n: int, action) -> None:
        self.actions[n] = action

    # ---------------------------------------------------------------- UpdateEndpoint
    def update(self, params, **_):
        params = json.loads(params["body"])  # the request as botocore serialised it
        if self.fail_next_update:
            message, self.fail_next_update = self.fail_next_update, None
            raise _error("UpdateEndpoint", message)
        endpoint = self.backend.endpoints.get(params["EndpointName"])
        if endpoint is None:
            raise _error("UpdateEndpoint", f"Could not find endpoint {params['EndpointName']}.")
        if endpoint.endpoint_status != "InService":
            raise _error("UpdateEndpoint", "Cannot update in-progress endpoint")
        new = self.backend.endpoint_configs.get(params["EndpointConfigName"])
        if new is None:
            raise _error("UpdateEndpoint", "Could not find endpoint configuration "
                                           f"{params['EndpointConfigName']}.")
        old = self.backend.endpoint_configs[endpoint.endpoint_config_name]
        (old_variant,), (new_variant,) = old.production_variants, new.production_variants
        if old_variant["VariantName"] != new_variant["VariantName"]:
            raise _error("UpdateEndpoint", "variant names must stay the same")
        config = params.get("DeploymentConfig", {})
        if "RollingUpdatePolicy" in config and "ServerlessConfig" in new_variant:
            raise _error("UpdateEndpoint", "rolling updates do not support serverless")
        alarms = [a["AlarmName"] for a in
                  config.get("AutoRollbackConfiguration", {}).get("Alarms", [])]
        self.deployment = {"endpoint": endpoint, "old": old, "new": new, "alarms": alarms,
                           "stages": self._stages(config, new_variant), "poll": 0,
                           "rolling_back": False, "start": datetime.now(timezone.utc)}
        endpoint.endpoint_status = "Updating"
        self._resolve(new.endpoint_config_name)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise _error("UpdateEndpoint", "Cannot update in-progress endpoint")
        return AWSResponse("https://sagemaker", 200, {}, None), {"EndpointArn": endpoint.arn}

    def scale(self, name: str, count: int) -> None:
        """Autoscaling at work: the endpoint's variant runs ``count`` instances now (its
        config still says the count it was deployed with)."""
        (variant,) = self.backend.endpoints[name].production_variants
        variant.update(CurrentInstanceCount=count, DesiredInstanceCount=count)

    @staticmethod
    def _stages(config: dict, variant: dict) -> list[tuple[str, int, str]]:
        """(VariantStatus, new instances in service, StatusMessage) per poll."""
        n = variant.get("InitialInstanceCount", 1)

        def instances(size: dict) -> int:
            if size["Type"] == "INSTANCE_COUNT":
                return size["Value"]
            return max(1, math.ceil(n * size["Value"] / 100))

        if "RollingUpdatePolicy" in config:
            batch = instances(config["RollingUpdatePolicy"]["MaximumBatchSize"])
            stages, done = [], 0
            while done < n:
                before, done = done, min(n, done + batch)
                stages += [("Creating", before, "next batch"),
                           ("ActivatingTraffic", done, "batch takes traffic"),
                           ("Baking", done, "baking the batch")]
            return stages
        routing = config.get("BlueGreenUpdatePolicy", {}).get("TrafficRoutingConfiguration",
                                                               {"Type": "ALL_AT_ONCE"})
        stages = [("Creating", 0, "provisioning the new fleet")]
        if routing["Type"] == "CANARY":
            k = instances(routing["CanarySize"])
            stages += [("ActivatingTraffic", k, "canary"), ("Baking", k, "baking the canary")]
        elif routing["Type"] == "LINEAR":
            step, done = instances(routing["LinearStepSize"]), 0
            while done + step < n:
                done += step
                stages += [("ActivatingTraffic", done, "linear step"),
                           ("Baking", done, "baking the step")]
        return stages + [("ActivatingTraffic", n, "all traffic"), ("Baking", n, "final baking")]

    # ---------------------------------------------------------------- DescribeEndpoint
    def describe(self, params, **_):
        params = json.loads(params["body"])
        endpoint = self.backend.endpoints.get(params["EndpointName"])
        if endpoint is None:
            return None  # moto answers: not found
        d = self.deployment
        if d is None or d["endpoint"] is not endpoint:
            return self._answer(endpoint)
        d["poll"] += 1
        if d["poll"] in self.actions:
            self.actions.pop(d["poll"])()
        if d["rolling_back"]:
            self._end(endpoint, d["old"])
            return self._answer(endpoint)
        firing = d["alarms"] and [a for a in self.cloudwatch.describe_alarms(
            AlarmNames=d["alarms"])["MetricAlarms"] if a["StateValue"] == "ALARM"]
        if firing:
            d["rolling_back"] = True
            return self._answer(endpoint, "RollingBack", self._pending(d, ("Deleting", 0,
                                                                           "rolling back")))
        index = d["poll"] - 1
        if index >= len(d["stages"]) and not self.stall:
            self._end(endpoint, d["new"])
            return self._answer(endpoint)
        stage = d["stages"][min(index, len(d["stages"]) - 1)]
        return self._answer(endpoint, "Updating", self._pending(d, stage))

    def _pending(self, d: dict, stage: tuple[str, int, str]) -> dict:
        (variant,) = d["new"].production_variants
        status, count, message = stage
        summary = {"VariantName": variant["VariantName"],
                   "VariantStatus": [{"Status": status, "StatusMessage": message,
                                      "StartTime": d["start"]}]}
        if "ServerlessConfig" in variant:
            summary["DesiredServerlessConfig"] = variant["ServerlessConfig"]
        else:
            summary.update(CurrentInstanceCount=count,
                           DesiredInstanceCount=variant["InitialInstanceCount"])
        return {"EndpointConfigName": d["new"].endpoint_config_name,
                "ProductionVariants": [summary], "StartTime": d["start"]}

    def _end(self, endpoint, config) -> None:
        endpoint.endpoint_config_name = config.endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(
            config.production_variants)
        endpoint.endpoint_status = "InService"
        self.deployment = None

    def _resolve(self, config: str) -> dict:
        """DeployedImages' entry for ``config``'s fleet: the image its model names, and that
        tag's digest when the fleet started (``REPOSITORY@DIGEST``), as SageMaker records it."""
        if config not in self.resolved:
            (variant,) = self.backend.endpoint_configs[config].production_variants
            image = self.sagemaker.describe_model(ModelName=variant["ModelName"])[
                "PrimaryContainer"]["Image"]
            repository, _, tag = image.rpartition("/")[2].partition(":")
            digest = self.ecr.describe_images(repositoryName=repository, imageIds=[
                {"imageTag": tag or "latest"}])["imageDetails"][0]["imageDigest"]
            self.resolved[config] = {"SpecifiedImage": image,
                                     "ResolvedImage": f"{image.rpartition(':')[0]}@{digest}",
                                     "ResolutionTime": datetime.now(timezone.utc)}
        return self.resolved[config]

    def _answer(self, endpoint, status: str | None = None, pending: dict | None = None):
        """DescribeEndpoint's answer as SageMaker shapes it (moto's own carries Tags and the
        endpoint config's DataCaptureConfig, which the output shape has not)."""
        config = self.backend.endpoint_configs[endpoint.endpoint_config_name]
        answer = {"EndpointName": endpoint.endpoint_name, "EndpointArn": endpoint.arn,
                  "EndpointConfigName": endpoint.endpoint_config_name,
                  "ProductionVariants": [
                      dict(v, DeployedImages=[self._resolve(endpoint.endpoint_config_name)])
                      for v in endpoint.production_variants],
                  "EndpointStatus": status or endpoint.endpoint_status,
                  "CreationTime": endpoint.creation_time,
                  "LastModifiedTime": endpoint.last_modified_time}
        capture = config.data_capture_config
        if capture:
            answer["DataCaptureConfig"] = {
                "EnableCapture": capture["EnableCapture"], "CaptureStatus": "Started",
                "CurrentSamplingPercentage": capture["InitialSamplingPercentage"],
                "DestinationS3Uri": capture["DestinationS3Uri"],
                "KmsKeyId": capture.get("KmsKeyId", "")}
        if config.async_inference_config:
            answer["AsyncInferenceConfig"] = config.async_inference_config
        if pending:
            answer["PendingDeploymentSummary"] = pending
        validate_parameters(answer, self.shape)
        return AWSResponse("https://sagemaker", 200, {}, None), answer

