"""What a model version is made of, for ``deploy`` (a new endpoint), ``update`` (a new version
behind one) and ``transform`` (a batch transform job's model): its model.tar.gz, the serving
environment, data capture and the GPU driver's AMI, and the command-line options that set them.
Every value is checked here, before any AWS call that would create something."""

from __future__ import annotations

from container import gpu_hosts
from contract.artifact import MAX_BATCH
from deployment.aliases import renamed
from deployment.errors import UserError
from deployment.options import ArtifactOptions, ServingOptions
from deployment.settings import Context, load_state
from serve.config import Settings
from serve.settings_table import DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_DELAY_MS, MAX_TIMEOUT_S, ROWS

# Applied when an endpoint is created; an update keeps the endpoint's own values.
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_STARTUP_TIMEOUT_S = 600
# What a new instance does before /ping turns 200, at rates below what SageMaker instances
# reach, so that a timeout derived from them is never the reason a healthy endpoint fails:
# pull the image (ECR's compressed size), download and unpack model.tar.gz, then start (import
# torch, load the model uncompiled; compiling runs after /ping is 200: serve/compiling.py).
PULL_BYTES_PER_S = 40 * 1024**2
DOWNLOAD_BYTES_PER_S = 40 * 1024**2
START_S = {"cpu": 120, "gpu": 240}  # a GPU adds its driver, CUDA context and cuDNN set-up
MIN_TIMEOUT_S, MAX_STARTUP_TIMEOUT_S = 60, 3600  # both fields' range (API reference)
DEFAULT_MEMORY_MB = 6144
DEFAULT_MAX_CONCURRENCY = 5


def add_artifact_arguments(p) -> None:
    """The options of every model of ours: its artifact and its serving settings."""
    p.add_argument("--training-job", help="this job's model (default: the last one)")
    p.add_argument("--model-data", help="or this model.tar.gz")
    p.add_argument("--workers", type=int, help="SAGEMAKER_MODEL_SERVER_WORKERS")
    p.add_argument("--max-batch-size", type=int, metavar="N",
                   help=f"SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE: images per forward pass, 1 to "
                        f"{MAX_BATCH} (default: serve's, {DEFAULT_MAX_BATCH['cpu']} on CPU, "
                        f"{DEFAULT_MAX_BATCH['gpu']} on GPU)")
    p.add_argument("--max-batch-delay-ms", type=int, metavar="MS",
                   help="SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS: how long a batch may wait for "
                        f"requests still decoding (default: serve's, "
                        f"{DEFAULT_MAX_BATCH_DELAY_MS['cpu']} on CPU, "
                        f"{DEFAULT_MAX_BATCH_DELAY_MS['gpu']} on GPU)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="any other serving setting in the model's environment (docs/serving.md's "
                        "serving table: SERVE_COMPILE=off, SERVE_PRECISION=fp32, ...); repeat "
                        "it for more; checked by serve's own reader before any AWS call")


def add_model_arguments(p) -> None:
    """The options ``deploy`` and ``update`` share: the model, its serving settings and the
    variant's shape. Their defaults are None (not given): ``deploy`` fills in the creation
    defaults above, ``update`` keeps what the endpoint has."""
    add_artifact_arguments(p)
    p.add_argument("--instance-type", dest="endpoint_instance_type", metavar="TYPE",
                   help="the endpoint's instance type (new endpoint: deploy.toml's "
                        "endpoint_instance_type, else ml.g5.xlarge)")
    p.add_argument("--instance-types", metavar="TYPE,TYPE,...",
                   help="instance pools: up to 5 types in priority order, SageMaker falling back "
                        "to the next when one has no capacity (in place of --instance-type)")
    p.add_argument("--provision-timeout", type=int, metavar="S",
                   help="with --instance-types: seconds SageMaker tries the pools for capacity, "
                        "300-3600 (default: SageMaker's)")
    p.add_argument("--metrics-frequency", type=int, metavar="S",
                   help="seconds between the metrics SageMaker publishes (10, 30, 60, 120, 180, "
                        "240 or 300; new endpoint: 60)")
    p.add_argument("--no-detailed-observability", action="store_true",
                   help="no detailed observability: SageMaker does not scrape the container's "
                        "/metrics (new endpoint: on)")
    p.add_argument("--instance-count", type=int,
                   help=f"instances (new endpoint: {DEFAULT_INSTANCE_COUNT})")
    p.add_argument("--startup-timeout", type=int,
                   help="container startup health-check timeout, 60-3600 s (new endpoint: "
                        "from the image's size in ECR)")
    p.add_argument("--serverless", action="store_true")
    p.add_argument("--memory-mb", type=int,
                   help=f"serverless memory (new endpoint: {DEFAULT_MEMORY_MB})")
    renamed(p, "--serverless-concurrency", "--max-concurrency", dest="max_concurrency", type=int,
            metavar="N", help="serverless: requests the endpoint works on at once (MaxConcurrency; "
                              f"new endpoint: {DEFAULT_MAX_CONCURRENCY})")
    p.add_argument("--capture", type=int, metavar="PERCENT",
                   help="capture this share of requests to S3 (SageMaker data capture; off by "
                        "default)")
    p.add_argument("--inference-ami-version", metavar="AMI",
                   help="the endpoint's InferenceAmiVersion (its NVIDIA driver); auto (a new "
                        f"endpoint's default): {gpu_hosts.choose_ami('ml.g5.xlarge')} on GPU "
                        "instance types, none on CPU types and serverless; known: "
                        f"{', '.join(gpu_hosts.INFERENCE_AMIS)}")


def model_data_uri(ctx: Context, artifact: ArtifactOptions) -> str:
    """The model.tar.gz to deploy: --model-data, else the training job's (the last one).

    Raises:
        UserError: no job named or remembered, or the job has not completed.
    """
    if artifact.model_data:
        return artifact.model_data
    job = artifact.training_job or load_state().get("training_job")
    if not job:
        raise UserError("no model: pass --training-job NAME or --model-data s3://.../model.tar.gz")
    desc = ctx.session.sagemaker_client.describe_training_job(TrainingJobName=job)
    status = desc["TrainingJobStatus"]
    uri = desc.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if status != "Completed" or not uri:
        raise UserError(f"training job {job} is {status}, not Completed: no model to deploy yet"
                        + (f" ({desc['FailureReason']})" if desc.get("FailureReason") else ""))
    return uri


def startup_timeouts(boto, image: str, model_data: str, gpu: bool) -> tuple[int, int]:
    """(ContainerStartupHealthCheckTimeoutInSeconds, ModelDataDownloadTimeoutInSeconds) for a
    new instance of ``image`` serving ``model_data`` (an s3:// model.tar.gz), from their sizes
    (ECR's and S3's) at the rates above, 60 to 3600 s each; DEFAULT_STARTUP_TIMEOUT_S and 600 s
    where a size cannot be read. A model that carries compiled programs is larger: its download
    gets the time it needs, and no compile happens before /ping.
    """
    import math

    from deployment import ecr

    def clamp(seconds: float) -> int:
        return int(min(MAX_STARTUP_TIMEOUT_S, max(MIN_TIMEOUT_S, math.ceil(seconds))))

    image_bytes = ecr.image_size_bytes(boto, image)
    model_bytes = _s3_size(boto, model_data)
    startup = (DEFAULT_STARTUP_TIMEOUT_S if image_bytes is None else
               clamp(START_S["gpu" if gpu else "cpu"] + image_bytes / PULL_BYTES_PER_S))
    download = 600 if model_bytes is None else clamp(60 + 2 * model_bytes / DOWNLOAD_BYTES_PER_S)
    return startup, download


def _s3_size(boto, uri: str) -> int | None:
    """The size of the S3 object at ``uri``, or None (not s3://, no access, no object)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not uri.startswith("s3://") or "/" not in uri[5:]:
        return None
    bucket, key = uri[5:].split("/", 1)
    try:
        return int(boto.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"])
    except (BotoCoreError, ClientError, KeyError, ValueError):
        return None


def data_capture(ctx: Context, endpoint: str, percent: int):
    """The SDK's DataCaptureConfig: ``percent`` of the requests (their inputs only,
    never the answers' logs) to s3://BUCKET/PREFIX/capture/ENDPOINT/.

    Raises:
        UserError: a percentage outside 1-100.
    """
    from sagemaker.model_monitor import DataCaptureConfig

    check_capture(percent)
    return DataCaptureConfig(enable_capture=True, sampling_percentage=percent,
                             destination_s3_uri=f"{ctx.s3_prefix()}/capture/{endpoint}",
                             capture_options=["REQUEST"])


def check_capture(percent: int | None) -> None:
    """Raises UserError for a --capture outside 1-100 (None: not given)."""
    if percent is not None and not 1 <= percent <= 100:
        raise UserError(f"--capture {percent}: a percentage of requests from 1 to 100")


def inference_ami(instance_type: str | None, requested: str) -> str | None:
    """The InferenceAmiVersion for the endpoint's variant (None on CPU types and serverless),
    decided from container/gpu_hosts.py's table alone: no AWS call, no credentials.

    Raises:
        UserError: an instance type or AMI the image cannot run on (one line with the fix).
    """
    try:
        return gpu_hosts.choose_ami(instance_type, requested)
    except gpu_hosts.HostError as exc:
        raise UserError(str(exc)) from exc


def base_environment(endpoint: str, variant: str = "AllTraffic") -> dict[str, str]:
    """A new model's environment before options: the invocation timeout and the metrics'
    dimensions (SageMaker does not tell a container its endpoint's name)."""
    return {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SERVE_ENDPOINT_NAME": endpoint,
            "SERVE_VARIANT_NAME": variant}


# Serving variables deploy.py sets itself: the variant's and endpoint's names for the metrics,
# and those with an option of their own.
OWN_VARIABLES = {
    "SERVE_ENDPOINT_NAME": "deploy.py sets it (the endpoint's name)",
    "SERVE_VARIANT_NAME": "deploy.py sets it (the variant's name)",
    "SAGEMAKER_BIND_TO_PORT": "SageMaker sets it",
    **dict.fromkeys(("SAGEMAKER_BATCH", "SAGEMAKER_BATCH_STRATEGY",
                     "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
                    "SageMaker sets it for a transform job (deploy.py for an asynchronous "
                    "endpoint)"),
    **{name: f"use {option}" for name, (option, _) in ServingOptions().variables().items()}}


def serve_reads() -> set[str]:
    """The SERVE_* and SAGEMAKER_* variables of serve's settings table
    (serve/settings_table.py, ``ROWS``): SM_MODEL_DIR is for local runs only, since SageMaker
    always unpacks the model at /opt/ml/model."""
    return {row.variable for row in ROWS if row.variable.startswith(("SERVE_", "SAGEMAKER_"))}


def check_env(pairs: tuple[tuple[str, str], ...]) -> None:
    """Refuse an --env NAME that serve does not read, or that deploy.py sets itself.

    Raises:
        UserError: one line naming the variable and what to do instead.
    """
    if not pairs:
        return
    known = serve_reads()
    for name, _ in pairs:
        if name in OWN_VARIABLES:
            raise UserError(f"--env {name}: {OWN_VARIABLES[name]}")
        if name not in known:
            raise UserError(f"--env {name}: serve reads no such variable; it reads "
                            + ", ".join(sorted(known - set(OWN_VARIABLES))))


def serving_environment(serving: ServingOptions, base: dict[str, str],
                        extra: dict[str, str] | None = None,
                        container: str = "the endpoint's container") -> dict[str, str]:
    """``base`` (a new model's, or the endpoint's current model's) with the workers and
    batching options given and ``extra`` (a transform job's or an asynchronous endpoint's
    payload cap and timeout) and each --env (``check_env``), each checked with serve's own
    reader (serve/config.py), so a value the container would refuse at start is one line here,
    before any AWS call. CreateModel takes 100 entries (an inference component's container 16);
    serve reads about 30.

    Raises:
        UserError: a value serve would refuse (``container`` names whose).
    """
    env = dict(base)
    check_env(serving.env)
    # Each variable with how the user gave it, for the refusal line.
    options = {name: (f"{flag} {value}", value)
               for name, (flag, value) in serving.variables().items()}
    options.update({name: (f"--env {name}={value}", value) for name, value in serving.env})
    options.update({name: (f"{name} {value}", value) for name, value in (extra or {}).items()})
    for name, (given, value) in options.items():
        if value is None:
            continue
        env[name] = str(value)
        try:
            Settings.from_env(env, gpus=0)
        except ValueError as exc:
            raise UserError(f"{given}: {exc}; {container} would refuse to start") from None
    return env


def check_seconds(option: str, value: int) -> int:
    """An invocation timeout in seconds: 1 to 3600 (transform jobs' InvocationsTimeoutInSeconds
    and asynchronous endpoints' InvocationTimeoutSeconds, API reference).

    Raises:
        UserError: outside that range.
    """
    if not 1 <= value <= MAX_TIMEOUT_S:
        raise UserError(f"{option} {value}: seconds from 1 to {MAX_TIMEOUT_S} (SageMaker's "
                        "limit for transform jobs and asynchronous endpoints)")
    return value
