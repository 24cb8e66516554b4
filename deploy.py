#!/usr/bin/env python3
"""deploy.py: the workstation side of the dog-breed classifier on Amazon SageMaker.

Drives AWS through the SageMaker Python SDK 2.x (generic ``Estimator`` with ``image_uri``,
``HyperparameterTuner``, ``Model``, ``Predictor``)::

    python deploy.py data      # fetch dogImages, upload train/valid/test to S3, print the URIs
    python deploy.py tune      # Bayesian tuning of lr, batch-size, epochs, momentum, weight-decay
    python deploy.py train     # one job: the best tuning job's hyperparameters, or given ones
    python deploy.py deploy    # a real-time, serverless or asynchronous endpoint
    python deploy.py predict PHOTO_OR_URL...   # top-k breeds per photo
    python deploy.py delete    # endpoint, endpoint config and model; safe to repeat
    python deploy.py local     # train and deploy with the SDK's local mode on a Docker engine

Shared settings (region, role, bucket, image, names) come from, in order: the command line, the
environment (``DEPLOY_<NAME>``, e.g. ``DEPLOY_ROLE``), the settings file (``--config``,
``$DEPLOY_CONFIG``, else ``./deploy.toml``; see ``deploy.example.toml``), built-in defaults.
Every user error ends in one line on stderr saying what is wrong and how to fix it, exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

ROOT = Path(__file__).resolve().parent
STATE_FILE = ROOT / "out" / "deploy_state.json"
DEFAULT_REPOSITORY = "sagemaker-dog-breeds"
SPLITS = ("train", "valid", "test")

try:  # one source of truth for the metric lines and the hyperparameter names (torch-free)
    from train.metrics import METRIC_DEFINITIONS, OBJECTIVES
except ImportError:  # pragma: no cover - deploy.py copied away from the repository
    sys.exit("error: run deploy.py from the repository (it imports train/metrics.py)")

# Hyperparameter names `train` accepts: train/hyperparameters.py SPECS when it imports (it needs
# sagemaker-training but not torch), else this copy; tests/deploy checks that they agree.
FALLBACK_HYPERPARAMETER_NAMES = (
    "amp", "arch", "batch-size", "debugger-rules", "early-stopping-patience", "epochs",
    "freeze-epochs", "image-size", "label-smoothing", "lr", "max-images-per-class",
    "min-crop-scale", "momentum", "num-workers", "pretrained", "processes-per-host",
    "profiler-steps", "seed", "weight-decay",
)
try:
    from train.hyperparameters import SPECS as _SPECS

    HYPERPARAMETER_NAMES = tuple(sorted(_SPECS))
except ImportError:  # a workstation without sagemaker-training
    HYPERPARAMETER_NAMES = FALLBACK_HYPERPARAMETER_NAMES


class UserError(Exception):
    """A problem the user fixes: printed as one line, exit 1."""


# ----------------------------------------------------------------------------------- settings
SETTING_DEFAULTS = {
    "region": None,
    "role": None,
    "bucket": None,
    "prefix": "dog-breeds",
    "image": None,
    "repository": DEFAULT_REPOSITORY,
    "tag": "latest",
    "instance_type": "ml.g5.xlarge",
    "instance_count": 1,
    "endpoint": "dog-breeds",
    "endpoint_instance_type": "ml.g5.xlarge",
    "data_dir": "data",
}


def load_settings(path: str | None) -> dict:
    """Settings file values merged over the defaults, then ``DEPLOY_*`` environment variables."""
    import tomllib

    values = dict(SETTING_DEFAULTS)
    explicit = path or os.environ.get("DEPLOY_CONFIG")
    file = Path(explicit) if explicit else Path("deploy.toml")
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"settings file {file} is not valid TOML: {exc}") from exc
        unknown = set(data) - set(SETTING_DEFAULTS)
        if unknown:
            raise UserError(f"settings file {file}: unknown key(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(SETTING_DEFAULTS)}")
        values.update(data)
    elif explicit:
        raise UserError(f"settings file {file} does not exist; copy deploy.example.toml there")
    for key in SETTING_DEFAULTS:
        env = os.environ.get("DEPLOY_" + key.upper())
        if env:
            values[key] = env
    if not values["region"]:
        values["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return values


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def save_state(**changes) -> None:
    """Remember the last job, model and endpoint names in out/deploy_state.json."""
    state = load_state()
    state.update(changes)
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def timestamp() -> str:
    return time.strftime("%y%m%d-%H%M%S", time.gmtime())


# -------------------------------------------------------------------------------- AWS context
def make_boto_session(region: str | None):
    """The boto3 session every AWS call goes through (tests register botocore handlers on it)."""
    import boto3

    return boto3.Session(region_name=region)


@dataclass
class Context:
    """Settings plus lazily made AWS sessions."""

    settings: dict
    args: argparse.Namespace
    _sm: object = field(default=None, repr=False)

    def get(self, name: str):
        value = getattr(self.args, name, None)
        return value if value is not None else self.settings.get(name)

    @property
    def session(self):
        if self._sm is None:
            import sagemaker

            boto = make_boto_session(self.get("region"))
            if not boto.region_name:
                raise UserError("no AWS region: pass --region, set region in deploy.toml, or "
                                "set AWS_REGION")
            self._sm = sagemaker.Session(boto_session=boto)
        return self._sm

    @property
    def boto(self):
        return self.session.boto_session

    @property
    def region(self) -> str:
        return self.boto.region_name

    def account(self) -> str:
        return self.boto.client("sts").get_caller_identity()["Account"]

    def bucket(self) -> str:
        return self.get("bucket") or self.session.default_bucket()

    def s3_prefix(self) -> str:
        return f"s3://{self.bucket()}/{self.get('prefix').strip('/')}"

    def role(self) -> str:
        role = self.get("role")
        if not role:
            raise UserError("no IAM role: pass --role arn:aws:iam::ACCOUNT:role/NAME, set role in "
                            "deploy.toml or DEPLOY_ROLE (a SageMaker execution role)")
        if not role.startswith("arn:"):
            role = f"arn:aws:iam::{self.account()}:role/{role}"
        return role

    def image(self, check: bool = True) -> str:
        image = self.get("image")
        if not image:
            image = (f"{self.account()}.dkr.ecr.{self.region}.amazonaws.com/"
                     f"{self.get('repository')}:{self.get('tag')}")
        if check:
            check_ecr_image(self.boto, image)
        return image


def check_ecr_image(boto, image: str) -> None:
    """Fail early, with the fix, when an ECR image URI names a missing repository or tag."""
    host, _, rest = image.partition("/")
    if ".dkr.ecr." not in host or not rest:
        return  # not ECR: nothing to check
    account = host.split(".")[0]
    region = host.split(".dkr.ecr.")[1].split(".")[0]
    repo, _, tag = rest.partition(":")
    if "@" in repo:
        repo, _, digest = repo.partition("@")
        ids = [{"imageDigest": digest}]
    else:
        ids = [{"imageTag": tag or "latest"}]
    from botocore.exceptions import ClientError

    ecr = boto.client("ecr", region_name=region)
    try:
        ecr.describe_images(registryId=account, repositoryName=repo, imageIds=ids)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("RepositoryNotFoundException", "ImageNotFoundException"):
            raise UserError(f"image {image} is not in ECR ({code}); build and push it with "
                            f"container/build_and_push.sh {repo} {tag or 'latest'}, or pass "
                            "--image") from exc
        raise


# ------------------------------------------------------------------------------ hyperparameters
def parse_hyperparameters(pairs: list[str]) -> dict[str, str]:
    """``["lr=0.01", "epochs=3"]`` to a dict of strings, names checked against `train`'s."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise UserError(f"--hp {pair!r}: write NAME=VALUE, e.g. --hp lr=0.01")
        check_hyperparameter_name(name)
        out[name] = value.strip()
    return out


def check_hyperparameter_name(name: str) -> None:
    if name not in HYPERPARAMETER_NAMES:
        raise UserError(f"unknown hyperparameter {name!r}; accepted: "
                        f"{', '.join(HYPERPARAMETER_NAMES)}")


def parse_range(text: str, kind=float) -> tuple:
    try:
        lo, hi = (kind(v) for v in text.split(","))
    except ValueError as exc:
        raise UserError(f"range {text!r}: write MIN,MAX, e.g. 1e-4,1e-1") from exc
    if not lo < hi:
        raise UserError(f"range {text!r}: MIN must be below MAX")
    return lo, hi


def hyperparameter_ranges(args) -> dict:
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, IntegerParameter

    lr = parse_range(args.lr_range)
    if lr[0] <= 0:
        raise UserError("--lr-range: the learning rate is searched on a log scale, MIN must be > 0")
    epochs = parse_range(args.epochs_range, int)
    sizes = [s.strip() for s in args.batch_sizes.split(",") if s.strip()]
    if not sizes or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise UserError(f"--batch-sizes {args.batch_sizes!r}: write positive integers, e.g. 32,64")
    ranges = {
        "lr": ContinuousParameter(*lr, scaling_type="Logarithmic"),
        "batch-size": CategoricalParameter(sizes),
        "epochs": IntegerParameter(*epochs),
    }
    if args.momentum_range:
        ranges["momentum"] = ContinuousParameter(*parse_range(args.momentum_range))
    if args.weight_decay_range:
        lo, hi = parse_range(args.weight_decay_range)
        if lo <= 0:
            raise UserError("--weight-decay-range: searched on a log scale, MIN must be > 0")
        ranges["weight-decay"] = ContinuousParameter(lo, hi, scaling_type="Logarithmic")
    return ranges


# ---------------------------------------------------------------------------------- estimator
def data_channels(ctx: Context, data: str | None, pretrained: str | None) -> dict:
    from sagemaker.inputs import TrainingInput

    base = (data or f"{ctx.s3_prefix()}/data").rstrip("/")
    channels = {s: TrainingInput(f"{base}/{s}", distribution="FullyReplicated") for s in SPLITS}
    if pretrained:
        channels["pretrained"] = TrainingInput(pretrained, distribution="FullyReplicated")
    return channels


def debugger_settings(ctx: Context, job_prefix: str) -> dict:
    """Hook, built-in rules and profiler for accounts that still have the Debugger service.

    Each rule names the collections it reads, so the SDK adds no default collections."""
    from sagemaker.debugger import (CollectionConfig, DebuggerHookConfig, ProfilerConfig,
                                    ProfilerRule, Rule, rule_configs)

    losses = CollectionConfig(name="losses", parameters={"save_interval": "10"})
    gradients = CollectionConfig(name="gradients", parameters={"save_interval": "50"})
    weights = CollectionConfig(name="weights", parameters={"save_interval": "50"})
    hook = DebuggerHookConfig(s3_output_path=f"{ctx.s3_prefix()}/debug/{job_prefix}",
                              collection_configs=[losses, gradients, weights])
    rules = [
        Rule.sagemaker(rule_configs.loss_not_decreasing(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.overfit(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.overtraining(), collections_to_save=[losses]),
        Rule.sagemaker(rule_configs.vanishing_gradient(), collections_to_save=[gradients]),
        Rule.sagemaker(rule_configs.poor_weight_initialization(), collections_to_save=[weights]),
        ProfilerRule.sagemaker(rule_configs.ProfilerReport()),
    ]
    profiler = ProfilerConfig(s3_output_path=f"{ctx.s3_prefix()}/profiler/{job_prefix}",
                              system_monitor_interval_millis=500)
    return {"debugger_hook_config": hook, "rules": rules, "profiler_config": profiler,
            "disable_profiler": False}


def make_estimator(ctx: Context, args, hyperparameters: dict, *, session=None,
                   image: str | None = None, role: str | None = None,
                   checkpoints: str | None = None, output_path: str | None = None):
    from sagemaker.estimator import Estimator

    spot = getattr(args, "spot", False)
    if spot and args.max_wait < args.max_run:
        raise UserError(f"--max-wait ({args.max_wait}) must be at least --max-run "
                        f"({args.max_run}) for spot training")
    kwargs = dict(
        image_uri=image or ctx.image(),
        role=role or ctx.role(),
        instance_count=int(ctx.get("instance_count")),
        instance_type=ctx.get("instance_type"),
        volume_size=args.volume_size,
        max_run=args.max_run,
        hyperparameters=hyperparameters,
        metric_definitions=METRIC_DEFINITIONS,
        output_path=output_path or f"{ctx.s3_prefix()}/output",
        sagemaker_session=session or ctx.session,
        base_job_name="dog-breeds",
        environment={"PYTHONUNBUFFERED": "1"},
    )
    if spot:
        kwargs.update(use_spot_instances=True, max_wait=args.max_wait)
    if checkpoints:
        kwargs["checkpoint_s3_uri"] = checkpoints
    if getattr(args, "debugger_service", False):
        kwargs.update(debugger_settings(ctx, args.job_name or "train"))
    else:  # our container writes its own reports; the SDK would add a hook and profiler
        kwargs.update(disable_profiler=True, debugger_hook_config=False)
    return Estimator(**kwargs)


# ------------------------------------------------------------------------------------ data
def cmd_data(ctx: Context, args) -> int:
    from train.datasets import count_images, fetch_dog_images, subset

    if args.source:
        root = Path(args.source)
        if not (root / "train").is_dir() or not (root / "valid").is_dir():
            raise UserError(f"--source {root}: expected train/ and valid/ folders in ImageFolder "
                            "layout (NNN.Breed_name/*.jpg)")
    else:
        root = fetch_dog_images(Path(ctx.get("data_dir")))
        if args.per_class:
            root = subset(root, root.parent / f"dogImages-{args.per_class}", args.per_class)
    for split, (classes, images) in count_images(root).items():
        print(f"{split}: {classes} classes, {images} images in {root / split}")
    bucket = ctx.bucket()
    key_prefix = f"{ctx.get('prefix').strip('/')}/data"
    uris = upload_tree(ctx.boto.client("s3"), root, bucket, key_prefix)
    for split, uri in uris.items():
        print(f"{split}: {uri}")
    save_state(data=f"s3://{bucket}/{key_prefix}")
    print(f"data: s3://{bucket}/{key_prefix} (train with --data s3://{bucket}/{key_prefix})")
    return 0


def upload_tree(s3, root: Path, bucket: str, key_prefix: str) -> dict[str, str]:
    """Upload root/{train,valid,test} under s3://bucket/key_prefix/, skipping objects already
    there with the same size (re-runnable); progress bar on stderr."""
    from tqdm import tqdm

    files = [f for s in SPLITS if (root / s).is_dir() for f in sorted((root / s).rglob("*"))
             if f.is_file()]
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                             Prefix=key_prefix + "/"):
        for obj in page.get("Contents", []):
            existing[obj["Key"]] = obj["Size"]
    todo = [f for f in files
            if existing.get(f"{key_prefix}/{f.relative_to(root).as_posix()}") != f.stat().st_size]
    total = sum(f.stat().st_size for f in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", file=sys.stderr,
              disable=not todo) as bar:
        for f in todo:
            s3.upload_file(str(f), bucket, f"{key_prefix}/{f.relative_to(root).as_posix()}",
                           Callback=bar.update)
    print(f"uploaded {len(todo)} files ({total / 1e6:.1f} MB), {len(files) - len(todo)} "
          "already there")
    return {s: f"s3://{bucket}/{key_prefix}/{s}" for s in SPLITS if (root / s).is_dir()}


# ------------------------------------------------------------------------------------ tune
def cmd_tune(ctx: Context, args) -> int:
    from sagemaker.tuner import HyperparameterTuner

    if args.attach:
        return print_tuning_results(ctx.session.sagemaker_client, args.attach)
    ranges = hyperparameter_ranges(args)
    static = parse_hyperparameters(args.hp)
    clash = set(static) & set(ranges)
    if clash:
        raise UserError(f"--hp {', '.join(sorted(clash))}: tuned, so cannot be fixed as well")
    estimator = make_estimator(ctx, args, static)
    tuner = HyperparameterTuner(
        estimator,
        objective_metric_name=args.objective,
        objective_type=OBJECTIVES[args.objective],
        hyperparameter_ranges=ranges,
        metric_definitions=METRIC_DEFINITIONS,
        strategy="Bayesian",
        early_stopping_type="Auto",
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
    )
    name = args.job_name or f"dogs-tune-{timestamp()}"
    tuner.fit(data_channels(ctx, args.data, args.pretrained), job_name=name, wait=False)
    save_state(tuning_job=name)
    print(f"started tuning job {name}: {args.max_jobs} jobs, {args.max_parallel_jobs} at a time, "
          f"objective {args.objective} ({OBJECTIVES[args.objective]})")
    if not args.wait:
        print(f"follow it with: python deploy.py tune --attach {name}")
        return 0
    tuner.wait()
    return print_tuning_results(ctx.session.sagemaker_client, name)


def tuning_jobs(sm, name: str) -> list[dict]:
    jobs, token = [], None
    while True:
        kwargs = {"HyperParameterTuningJobName": name, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        jobs += page["TrainingJobSummaries"]
        token = page.get("NextToken")
        if not token:
            return jobs


def print_tuning_results(sm, name: str) -> int:
    desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    objective = desc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    print(f"tuning job {name}: {desc['HyperParameterTuningJobStatus']}, objective "
          f"{objective['MetricName']} ({objective['Type']})")
    jobs = tuning_jobs(sm, name)
    reverse = objective["Type"] == "Maximize"
    missing = float("-inf") if reverse else float("inf")  # jobs without a value sort last
    scored = sorted(jobs, key=lambda j: j.get("FinalHyperParameterTuningJobObjectiveMetric",
                                              {}).get("Value", missing), reverse=reverse)
    names = sorted({k for j in jobs for k in j.get("TunedHyperParameters", {})})
    header = ["training job", "status", objective["MetricName"]] + names
    rows = []
    for j in scored:
        value = j.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
        rows.append([j["TrainingJobName"], j["TrainingJobStatus"],
                     "-" if value is None else f"{value:.4f}"]
                    + [j.get("TunedHyperParameters", {}).get(n, "") for n in names])
    print_table(header, rows)
    best = desc.get("BestTrainingJob")
    if best:
        print(f"best: {best['TrainingJobName']} {objective['MetricName']}="
              f"{best.get('FinalHyperParameterTuningJobObjectiveMetric', {}).get('Value')} "
              f"(train it with: python deploy.py train --tuning-job {name})")
    else:
        print("best: none yet")
    return 0


def print_table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def best_hyperparameters(sm, tuning_job: str) -> tuple[str, dict[str, str]]:
    """The best training job of ``tuning_job`` and its hyperparameters, without the keys the
    platform adds."""
    desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    best = desc.get("BestTrainingJob")
    if not best:
        raise UserError(f"tuning job {tuning_job} has no best training job yet "
                        f"({desc['HyperParameterTuningJobStatus']}); wait for it with "
                        f"python deploy.py tune --attach {tuning_job}")
    job = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    hps = {k: v.strip('"') for k, v in job["HyperParameters"].items()
           if not k.startswith(("sagemaker_", "_tuning_objective_metric"))}
    return best["TrainingJobName"], hps


# ------------------------------------------------------------------------------------ train
def cmd_train(ctx: Context, args) -> int:
    hyperparameters = {}
    tuning_job = args.tuning_job
    if tuning_job:
        best, hyperparameters = best_hyperparameters(ctx.session.sagemaker_client, tuning_job)
        print(f"hyperparameters of {best}, the best job of {tuning_job}: "
              + " ".join(f"{k}={v}" for k, v in sorted(hyperparameters.items())))
    hyperparameters.update(parse_hyperparameters(args.hp))
    name = args.job_name or f"dog-breeds-{timestamp()}"
    checkpoints = f"{ctx.s3_prefix()}/checkpoints/{name}" if args.spot else None
    estimator = make_estimator(ctx, args, hyperparameters, checkpoints=checkpoints)
    estimator.fit(data_channels(ctx, args.data, args.pretrained), job_name=name,
                  wait=args.wait, logs="All" if args.wait else "None")
    save_state(training_job=name)
    print(f"started training job {name}" + (" (managed spot, checkpoints in "
                                              f"{checkpoints})" if args.spot else ""))
    if args.wait:
        print(f"model: {estimator.model_data}")
        print(f"deploy it with: python deploy.py deploy --training-job {name}")
    else:
        print(f"deploy it when done with: python deploy.py deploy --training-job {name}")
    return 0


# ------------------------------------------------------------------------------------ deploy
def make_predictor_cls():
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    class DogBreedPredictor(Predictor):
        """Sends image bytes as image/jpeg and reads the JSON top-k answer."""

        def __init__(self, endpoint_name, sagemaker_session=None, **kwargs):
            kwargs.setdefault("serializer", IdentitySerializer("image/jpeg"))
            kwargs.setdefault("deserializer", JSONDeserializer())
            super().__init__(endpoint_name, sagemaker_session=sagemaker_session, **kwargs)

    return DogBreedPredictor


def model_data_uri(ctx: Context, args) -> str:
    if args.model_data:
        return args.model_data
    job = args.training_job or load_state().get("training_job")
    if not job:
        raise UserError("no model: pass --training-job NAME or --model-data s3://.../model.tar.gz")
    desc = ctx.session.sagemaker_client.describe_training_job(TrainingJobName=job)
    status = desc["TrainingJobStatus"]
    uri = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if status != "Completed" or not uri:
        raise UserError(f"training job {job} is {status}, not Completed: no model to deploy yet"
                        + (f" ({desc['FailureReason']})" if desc.get("FailureReason") else ""))
    return uri


def endpoint_status(sm, name: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def cmd_deploy(ctx: Context, args) -> int:
    from sagemaker.async_inference import AsyncInferenceConfig
    from sagemaker.model import Model
    from sagemaker.serverless import ServerlessInferenceConfig

    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    status = endpoint_status(sm, endpoint)
    if status and not args.update:
        print(f"endpoint {endpoint} already exists ({status}); nothing done. Pass --update to "
              "put the new model behind it, or run python deploy.py delete first")
        return 0
    if args.serverless and args.asynchronous:
        raise UserError("--serverless and --async exclude each other: pick one")
    model_data = model_data_uri(ctx, args)
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "60"}
    if args.workers:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(args.workers)
    name = f"{endpoint}-{timestamp()}"
    model = Model(image_uri=ctx.image(), model_data=model_data, role=ctx.role(), env=env,
                  name=name, predictor_cls=make_predictor_cls(), sagemaker_session=ctx.session)
    kwargs = {}
    if args.serverless:
        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=args.memory_mb, max_concurrency=args.max_concurrency)
    else:
        kwargs.update(initial_instance_count=args.instance_count,
                      instance_type=ctx.get("endpoint_instance_type"),
                      container_startup_health_check_timeout=args.startup_timeout)
        if args.asynchronous:
            kwargs["async_inference_config"] = AsyncInferenceConfig(
                output_path=f"{ctx.s3_prefix()}/async-output/{endpoint}")
    if status:
        model.create(instance_type=kwargs.get("instance_type"),
                     serverless_inference_config=kwargs.get("serverless_inference_config"))
        predictor = make_predictor_cls()(endpoint, sagemaker_session=ctx.session)
        predictor.update_endpoint(model_name=name, instance_type=kwargs.get("instance_type"),
                                  initial_instance_count=kwargs.get("initial_instance_count"),
                                  wait=args.wait)
        print(f"updated endpoint {endpoint} to model {name} ({model_data})")
    else:
        predictor = model.deploy(endpoint_name=endpoint, wait=args.wait, **kwargs)
        kind = ("serverless" if args.serverless else "asynchronous" if args.asynchronous
                else f"{args.instance_count} x {kwargs['instance_type']}")
        print(f"created model {name}, endpoint config and endpoint {endpoint} ({kind}) "
              f"from {model_data}")
        assert predictor is not None, "Model.deploy returns a Predictor with predictor_cls"
    save_state(endpoint=endpoint, model=name)
    if args.autoscale_max:
        configure_autoscaling(ctx.boto, endpoint, args.instance_count, args.autoscale_max,
                              args.autoscale_target)
    print(f"try it: python deploy.py predict --endpoint {endpoint} tests/data/dogs/*.jpg")
    return 0


def configure_autoscaling(boto, endpoint: str, min_count: int, max_count: int,
                          target: float) -> None:
    """Target tracking on invocations per instance for the endpoint's AllTraffic variant."""
    if max_count < min_count:
        raise UserError(f"--autoscale-max {max_count} is below --instance-count {min_count}")
    aas = boto.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/AllTraffic"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                 ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                 MinCapacity=min_count, MaxCapacity=max_count)
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target),
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
        })
    print(f"autoscaling {resource}: {min_count} to {max_count} instances, target {target:g} "
          "invocations per instance per minute")


# ------------------------------------------------------------------------------------ predict
def read_image(source: str, timeout: float = 30.0) -> bytes:
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as r:
                return r.read()
        except OSError as exc:
            raise UserError(f"could not fetch {source}: {exc}") from exc
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    return path.read_bytes()


def content_type(data: bytes) -> str:
    return "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"


def predict_table(predictor, sources: list[str], k: int) -> list[list]:
    from sagemaker.serializers import IdentitySerializer

    rows = []
    for source in sources:
        data = read_image(source)
        predictor.serializer = IdentitySerializer(content_type(data))
        answer = predictor.predict(data, custom_attributes=f"k={k}")
        for rank, p in enumerate(answer["predictions"][0]["top_k"], 1):
            rows.append([Path(source).name if rank == 1 else "", rank, p["label"],
                         f"{p['probability']:.3f}"])
    return rows


def cmd_predict(ctx: Context, args) -> int:
    endpoint = ctx.get("endpoint")
    predictor = make_predictor_cls()(endpoint, sagemaker_session=ctx.session)
    print_table(["image", "rank", "breed", "probability"],
                predict_table(predictor, args.images, args.top_k))
    return 0


# ------------------------------------------------------------------------------------ delete
def is_not_found(exc) -> bool:
    message = exc.response.get("Error", {}).get("Message", "")
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ResourceNotFound", "ResourceNotFoundException", "ValidationException") and (
        "not find" in message or "not exist" in message or "not found" in message.lower())


def cmd_delete(ctx: Context, args) -> int:
    """Endpoint, then its config, then its models: names are read first, so the order cannot
    lose one. Each missing piece is reported and skipped, so it is safe to run again."""
    from botocore.exceptions import ClientError

    endpoint = ctx.get("endpoint")
    sm = ctx.session.sagemaker_client
    config = endpoint
    try:
        config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    models = []
    try:
        desc = sm.describe_endpoint_config(EndpointConfigName=config)
        models = [v["ModelName"] for v in desc["ProductionVariants"]]
    except ClientError as exc:
        if not is_not_found(exc):
            raise
    deregister_autoscaling(ctx.boto, endpoint)
    steps = [("endpoint", endpoint, lambda: sm.delete_endpoint(EndpointName=endpoint)),
             ("endpoint config", config,
              lambda: sm.delete_endpoint_config(EndpointConfigName=config))]
    steps += [("model", m, lambda m=m: sm.delete_model(ModelName=m)) for m in models]
    for what, name, call in steps:
        try:
            call()
            print(f"deleted {what} {name}")
        except ClientError as exc:
            if not is_not_found(exc):
                raise
            print(f"{what} {name}: already gone")
    return 0


def deregister_autoscaling(boto, endpoint: str) -> None:
    from botocore.exceptions import ClientError

    aas = boto.client("application-autoscaling")
    try:
        aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{endpoint}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount")
        print(f"removed autoscaling of {endpoint}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("ObjectNotFoundException", "ValidationException"):
            raise


# ------------------------------------------------------------------------------------ local
LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"


def make_local_session(region: str):
    from sagemaker.local import LocalSession

    session = LocalSession(boto_session=make_boto_session(region))
    session.config = {"local": {"local_code": True}}
    return session


def cmd_local(ctx: Context, args) -> int:
    """Train on local folders, deploy the model on the local engine, classify, stop."""
    from sagemaker.model import Model

    region = ctx.get("region") or "us-east-1"
    session = make_local_session(region)
    data = Path(args.data_dir).resolve()
    if not (data / "train").is_dir():
        raise UserError(f"--data-dir {data}: expected train/ valid/ [test/] in ImageFolder layout"
                        " (make one with: python -m train.datasets digits out/digits)")
    image = args.image_tag
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    hyperparameters = parse_hyperparameters(args.hp)
    args.spot = False
    estimator = make_estimator(ctx, args, hyperparameters, session=session, image=image,
                               role=LOCAL_ROLE, output_path=f"file://{out}")
    estimator.instance_type = args.mode
    estimator.instance_count = 1
    inputs = {s: f"file://{data / s}" for s in SPLITS if (data / s).is_dir()}
    estimator.fit(inputs, job_name=args.job_name or f"dog-breeds-local-{timestamp()}")
    print(f"trained locally: {estimator.model_data}")
    model = Model(image_uri=image, model_data=estimator.model_data, role=LOCAL_ROLE,
                  predictor_cls=make_predictor_cls(), sagemaker_session=session)
    predictor = model.deploy(initial_instance_count=1, instance_type=args.mode)
    try:
        photos = [str(p) for p in sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))]
        print_table(["image", "rank", "breed", "probability"],
                    predict_table(predictor, args.images or photos, args.top_k))
    finally:
        predictor.delete_endpoint()
    print("local endpoint stopped")
    return 0


# -------------------------------------------------------------------------------- error map
HINTS = {
    "AccessDenied": "your credentials lack permission for this call; check the IAM policy",
    "AccessDeniedException": "your credentials lack permission for this call; check the IAM "
                             "policy (and that --role trusts sagemaker.amazonaws.com)",
    "ResourceLimitExceeded": "an account quota is reached; ask for more in the Service Quotas "
                             "console, or pick another --instance-type",
    "ThrottlingException": "AWS throttled the request; wait a little and run it again",
    "ExpiredToken": "your session credentials expired; refresh them (aws sso login)",
    "ExpiredTokenException": "your session credentials expired; refresh them (aws sso login)",
    "InvalidClientTokenId": "the access key is not valid; check aws configure / AWS_PROFILE",
    "UnrecognizedClientException": "the access key is not valid; check aws configure",
    "NoSuchBucket": "the bucket does not exist; create it or pass another --bucket",
    "ResourceInUse": "the name is taken; pass another --job-name or delete the old resource",
}


def cmd_report(ctx: Context, args) -> int:
    """Download a training job's output.tar.gz, print the rule table of the debugger report the
    container wrote (output/data/report/, train/report.py) and say where report.html is."""
    import tarfile

    from botocore.exceptions import ClientError

    name = args.training_job
    job = ctx.session.sagemaker_client.describe_training_job(TrainingJobName=name)
    output = job.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    uri = f"{output}/{name}/output/output.tar.gz"
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    dest = Path(args.output) / name
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "output.tar.gz"
    try:
        ctx.boto.client("s3").download_file(bucket, key, str(archive))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise UserError(f"{uri} does not exist: job {name} is {job['TrainingJobStatus']} "
                            f"and has written no output yet") from None
        raise
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    summary_path = dest / "report" / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"job {name} wrote no report/ (trained with debugger-rules=false, or "
                        f"by an older image)")
    summary = json.loads(summary_path.read_text())
    rows = [[r["name"], r["status"], "" if r["step"] is None else str(r["step"]), r["detail"]]
            for r in summary["rules"]]
    print(f"training job {name} ({job['TrainingJobStatus']}): "
          f"{len(summary['triggered'])} of {len(rows)} rules triggered")
    print_table(["rule", "status", "step", "detail"], rows)
    html = (dest / "report" / "report.html").resolve()
    print(f"report: {html.as_uri()}")
    if args.open:
        import webbrowser

        webbrowser.open(html.as_uri())
    return 0


def describe_error(exc: BaseException) -> str | None:
    """One line for a user error, or None for a bug (which then shows its traceback)."""
    from botocore.exceptions import (ClientError, NoCredentialsError, NoRegionError,
                                     ParamValidationError, PartialCredentialsError)

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials: run 'aws configure', set AWS_PROFILE, or export "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region, set region in deploy.toml, or set AWS_REGION"
    if isinstance(exc, ParamValidationError):
        return f"AWS rejected a parameter before sending it: {exc}; check the option values"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", str(exc))
        operation = getattr(exc, "operation_name", "?")
        if operation == "InvokeEndpoint" and code == "ValidationException" and "not found" in \
                message.lower():
            hint = "deploy it with python deploy.py deploy, or check --endpoint and --region"
        elif is_not_found(exc):
            hint = "check the name and --region"
        elif operation in ("PutObject", "UploadPart", "CreateMultipartUpload") and \
                code in ("AccessDenied", "403"):
            hint = "the bucket cannot be written; pass another --bucket or grant s3:PutObject"
        else:
            hint = HINTS.get(code, "the AWS message says what to change")
        return f"{operation} failed ({code}): {message.rstrip('.')}. Fix: {hint}"
    try:
        from boto3.exceptions import S3UploadFailedError
        from sagemaker.exceptions import UnexpectedStatusException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, S3UploadFailedError):
        return f"upload failed: {exc}. Fix: pass a --bucket you can write to"
    if isinstance(exc, UnexpectedStatusException):
        return f"{exc}"
    if type(exc).__name__ == "DatasetError" or isinstance(exc, (OSError, ValueError)):
        return f"{exc}"
    return None


# -------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("shared settings (else DEPLOY_* env, deploy.toml, defaults)")
    g.add_argument("--config", help="settings file (default ./deploy.toml or $DEPLOY_CONFIG)")
    g.add_argument("--region")
    g.add_argument("--role", help="SageMaker execution role ARN or name")
    g.add_argument("--bucket", help="S3 bucket (default: the SageMaker default bucket)")
    g.add_argument("--prefix", help="S3 key prefix (default dog-breeds)")
    g.add_argument("--image", help="image URI (default: ACCOUNT.dkr.ecr.REGION.amazonaws.com/"
                                   "sagemaker-dog-breeds:latest)")
    g.add_argument("--endpoint", help="endpoint name (default dog-breeds)")

    job = argparse.ArgumentParser(add_help=False)
    j = job.add_argument_group("training job")
    j.add_argument("--job-name")
    j.add_argument("--instance-type")
    j.add_argument("--instance-count", type=int)
    j.add_argument("--volume-size", type=int, default=50, help="GB (default 50)")
    j.add_argument("--max-run", type=int, default=24 * 3600, help="seconds (default 86400)")
    j.add_argument("--max-wait", type=int, default=36 * 3600,
                   help="spot: seconds to wait and run in all (default 129600)")
    j.add_argument("--no-spot", dest="spot", action="store_false", help="on-demand instances")
    j.add_argument("--data", help="S3 prefix holding train/ valid/ test/ (default "
                                  "s3://BUCKET/PREFIX/data)")
    j.add_argument("--pretrained", help="S3 URI of a state_dict for the pretrained channel")
    j.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help=f"hyperparameter, repeatable; names: {', '.join(HYPERPARAMETER_NAMES)}")
    j.add_argument("--no-wait", dest="wait", action="store_false",
                   help="start the job and return")

    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", parents=[common], help="fetch dogImages and upload it to S3")
    d.add_argument("--data-dir", help="where dogImages is or goes (default ./data)")
    d.add_argument("--per-class", type=int, help="upload only N photos per breed and split")
    d.add_argument("--source", help="upload this ImageFolder tree instead of dogImages")

    t = sub.add_parser("tune", parents=[common, job], help="hyperparameter tuning job")
    t.add_argument("--objective", choices=sorted(OBJECTIVES), default="valid_accuracy")
    t.add_argument("--max-jobs", type=int, default=12)
    t.add_argument("--max-parallel-jobs", type=int, default=3)
    t.add_argument("--lr-range", default="1e-4,1e-1")
    t.add_argument("--batch-sizes", default="32,64,128")
    t.add_argument("--epochs-range", default="5,20")
    t.add_argument("--momentum-range", default="0.8,0.99", help="empty: not tuned")
    t.add_argument("--weight-decay-range", default="1e-6,1e-2", help="empty: not tuned")
    t.add_argument("--attach", metavar="TUNING_JOB", help="only print the jobs table of one")

    tr = sub.add_parser("train", parents=[common, job], help="one training job")
    tr.add_argument("--tuning-job", help="start from the best hyperparameters of this job")
    tr.add_argument("--debugger-service", action="store_true",
                    help="SageMaker Debugger hook, built-in rules and profiler (accounts that "
                         "still have the service)")

    dp = sub.add_parser("deploy", parents=[common], help="model, endpoint config and endpoint")
    dp.add_argument("--training-job", help="deploy this job's model (default: the last one)")
    dp.add_argument("--model-data", help="or this model.tar.gz")
    dp.add_argument("--instance-type", dest="endpoint_instance_type")
    dp.add_argument("--instance-count", type=int, default=1)
    dp.add_argument("--startup-timeout", type=int, default=600,
                    help="container startup health-check timeout, 60-3600 s (default 600)")
    dp.add_argument("--workers", type=int, help="SAGEMAKER_MODEL_SERVER_WORKERS")
    dp.add_argument("--autoscale-max", type=int, help="target-tracking autoscaling up to N")
    dp.add_argument("--autoscale-target", type=float, default=100.0,
                    help="invocations per instance per minute (default 100)")
    dp.add_argument("--serverless", action="store_true")
    dp.add_argument("--memory-mb", type=int, default=6144, help="serverless memory")
    dp.add_argument("--max-concurrency", type=int, default=5, help="serverless concurrency")
    dp.add_argument("--async", dest="asynchronous", action="store_true")
    dp.add_argument("--update", action="store_true", help="replace the model of an endpoint")
    dp.add_argument("--no-wait", dest="wait", action="store_false")

    pr = sub.add_parser("predict", parents=[common], help="classify photos (files or URLs)")
    pr.add_argument("images", nargs="+")
    pr.add_argument("-k", "--top-k", type=int, default=3)

    sub.add_parser("delete", parents=[common], help="delete endpoint, config and model")

    rp = sub.add_parser("report", parents=[common],
                        help="download a training job's debugger report and print its rules")
    rp.add_argument("training_job", help="training job name")
    rp.add_argument("--output", default="out/reports", help="where the report is unpacked")
    rp.add_argument("--open", action="store_true", help="open report.html in a browser")

    lo = sub.add_parser("local", parents=[common, job], help="train and deploy on local Docker")
    lo.add_argument("--mode", choices=["local", "local_gpu"], default="local")
    lo.add_argument("--image-tag", default=f"{DEFAULT_REPOSITORY}:latest",
                    help="local image (default sagemaker-dog-breeds:latest)")
    lo.add_argument("--data-dir", required=True, help="local ImageFolder tree")
    lo.add_argument("--output", default="out/local", help="where model.tar.gz goes")
    lo.add_argument("--images", nargs="*", help="photos to classify (default tests/data/dogs)")
    lo.add_argument("-k", "--top-k", type=int, default=3)
    return p


COMMANDS = {"data": cmd_data, "tune": cmd_tune, "train": cmd_train, "deploy": cmd_deploy,
            "predict": cmd_predict, "delete": cmd_delete, "local": cmd_local,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    for name in ("sagemaker.config", "sagemaker", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        ctx = Context(load_settings(args.config), args)
        return COMMANDS[args.command](ctx, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, bugs keep traces
        line = describe_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
