"""``deploy.py deploy``: model, endpoint config and endpoint, with optional autoscaling."""

from __future__ import annotations

import sys

from container import gpu_hosts
from contract.artifact import MAX_BATCH
from deployment import ecr
from deployment.autoscaling import configure_autoscaling
from deployment.endpoints import endpoint_status, make_predictor_cls
from deployment.errors import UserError
from deployment.settings import Context, load_state, save_state, timestamp
from serve.config import DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_DELAY_MS, Settings

NAME = "deploy"
HELP = "model, endpoint config and endpoint"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--training-job", help="deploy this job's model (default: the last one)")
    p.add_argument("--model-data", help="or this model.tar.gz")
    p.add_argument("--instance-type", dest="endpoint_instance_type")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--startup-timeout", type=int, default=600,
                   help="container startup health-check timeout, 60-3600 s (default 600)")
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
    p.add_argument("--autoscale-max", type=int, help="target-tracking autoscaling up to N")
    p.add_argument("--autoscale-target", type=float, default=100.0,
                   help="invocations per instance per minute (default 100)")
    p.add_argument("--serverless", action="store_true")
    p.add_argument("--memory-mb", type=int, default=6144, help="serverless memory")
    p.add_argument("--max-concurrency", type=int, default=5, help="serverless concurrency")
    p.add_argument("--async", dest="asynchronous", action="store_true")
    p.add_argument("--update", action="store_true", help="replace the model of an endpoint")
    p.add_argument("--capture", type=int, metavar="PERCENT",
                   help="capture this share of requests to S3 (SageMaker data capture; off by "
                        "default)")
    p.add_argument("--inference-ami-version", default="auto", metavar="AMI",
                   help="the endpoint's InferenceAmiVersion (its NVIDIA driver); auto (default): "
                        f"{gpu_hosts.choose_ami('ml.g5.xlarge')} on GPU instance types, none on "
                        "CPU types and serverless; known: "
                        f"{', '.join(gpu_hosts.INFERENCE_AMIS)}")
    p.add_argument("--no-wait", dest="wait", action="store_false")


def model_data_uri(ctx: Context, args) -> str:
    """The model.tar.gz to deploy: --model-data, else the training job's (the last one).

    Raises:
        UserError: no job named or remembered, or the job has not completed.
    """
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


def data_capture(ctx: Context, endpoint: str, percent: int):
    """SageMaker's DataCaptureConfig: ``percent`` of the requests (their inputs only, never the
    answers' logs) to s3://BUCKET/PREFIX/capture/ENDPOINT/.

    Raises:
        UserError: a percentage outside 1-100.
    """
    from sagemaker.model_monitor import DataCaptureConfig

    if not 1 <= percent <= 100:
        raise UserError(f"--capture {percent}: a percentage of requests from 1 to 100")
    return DataCaptureConfig(enable_capture=True, sampling_percentage=percent,
                             destination_s3_uri=f"{ctx.s3_prefix()}/capture/{endpoint}",
                             capture_options=["REQUEST"])


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


def serving_environment(args, endpoint: str) -> dict[str, str]:
    """The model's environment: serve's settings that deploy.py sets (the invocation timeout,
    the metrics' dimensions, and the workers and batching options given), checked with serve's
    own reader (serve/config.py), so a value the container would refuse at start is one line
    here, before any AWS call. At most 6 entries: CreateModel takes 100 (and an inference
    component's container 16).

    Raises:
        UserError: a value serve would refuse.
    """
    # serve's metrics carry the endpoint's name: SageMaker does not tell a container its name.
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SERVE_ENDPOINT_NAME": endpoint,
           "SERVE_VARIANT_NAME": "AllTraffic"}
    options = {"SAGEMAKER_MODEL_SERVER_WORKERS": ("--workers", args.workers),
               "SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE": ("--max-batch-size", args.max_batch_size),
               "SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS": ("--max-batch-delay-ms",
                                                             args.max_batch_delay_ms)}
    for name, (option, value) in options.items():
        if value is None:
            continue
        env[name] = str(value)
        try:
            Settings.from_env(env, gpus=0)
        except ValueError as exc:
            raise UserError(f"{option} {value}: {exc}; the endpoint's container would refuse "
                            "to start") from None
    return env


def update_endpoint(ctx: Context, endpoint: str, model, kwargs: dict, ami: str | None,
                    wait: bool) -> None:
    """Put ``model`` behind ``endpoint`` through a new endpoint config that copies the current
    one (async output, KMS key, and data capture unless --capture is given) with a new
    production variant. The SDK's Predictor.update_endpoint builds that variant without
    InferenceAmiVersion, which would put a GPU endpoint back on its default driver."""
    from sagemaker import production_variant
    from sagemaker.utils import name_from_base

    serverless = kwargs.get("serverless_inference_config")
    capture = kwargs.get("data_capture_config")
    variant = production_variant(
        model.name, kwargs.get("instance_type"), kwargs.get("initial_instance_count"),
        serverless_inference_config=serverless._to_request_dict() if serverless else None,
        container_startup_health_check_timeout=kwargs.get(
            "container_startup_health_check_timeout"),
        inference_ami_version=ami)
    current = ctx.session.sagemaker_client.describe_endpoint(
        EndpointName=endpoint)["EndpointConfigName"]
    config = name_from_base(endpoint)
    ctx.session.create_endpoint_config_from_existing(
        current, config, new_production_variants=[variant],
        new_data_capture_config_dict=capture._to_request_dict() if capture else None)
    ctx.session.update_endpoint(endpoint, config, wait=wait)


def run(ctx: Context, args) -> int:
    """Create (or with --update, replace the model of) a real-time, serverless or
    asynchronous endpoint; re-running on an existing endpoint changes nothing."""
    from sagemaker.async_inference import AsyncInferenceConfig
    from sagemaker.model import Model
    from sagemaker.serverless import ServerlessInferenceConfig

    if args.serverless and args.asynchronous:
        raise UserError("--serverless and --async exclude each other: pick one")
    instance_type = None if args.serverless else ctx.get("endpoint_instance_type")
    ami = inference_ami(instance_type, args.inference_ami_version)
    endpoint = ctx.get("endpoint")
    env = serving_environment(args, endpoint)
    sm = ctx.session.sagemaker_client
    status = endpoint_status(sm, endpoint)
    if status and not args.update:
        print(f"endpoint {endpoint} already exists ({status}); nothing done. Pass --update to "
              "put the new model behind it, or run python deploy.py delete first")
        return 0
    model_data = model_data_uri(ctx, args)
    image = ctx.image()
    if args.serverless and (warning := ecr.serverless_size_warning(ctx.boto, image)):
        print(warning, file=sys.stderr)
    name = f"{endpoint}-{timestamp()}"
    model = Model(image_uri=image, model_data=model_data, role=ctx.role(), env=env,
                  name=name, predictor_cls=make_predictor_cls(), sagemaker_session=ctx.session)
    kwargs = {}
    if args.serverless:
        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=args.memory_mb, max_concurrency=args.max_concurrency)
    else:
        kwargs.update(initial_instance_count=args.instance_count, instance_type=instance_type,
                      container_startup_health_check_timeout=args.startup_timeout)
        if args.asynchronous:
            kwargs["async_inference_config"] = AsyncInferenceConfig(
                output_path=f"{ctx.s3_prefix()}/async-output/{endpoint}")
    if args.capture is not None:
        kwargs["data_capture_config"] = data_capture(ctx, endpoint, args.capture)
    on_ami = f", InferenceAmiVersion {ami}" if ami else ""
    if status:
        model.create(instance_type=kwargs.get("instance_type"),
                     serverless_inference_config=kwargs.get("serverless_inference_config"))
        update_endpoint(ctx, endpoint, model, kwargs, ami, args.wait)
        print(f"updated endpoint {endpoint} to model {name} ({model_data}{on_ami})")
    else:
        predictor = model.deploy(endpoint_name=endpoint, wait=args.wait,
                                 inference_ami_version=ami, **kwargs)
        kind = ("serverless" if args.serverless else "asynchronous" if args.asynchronous
                else f"{args.instance_count} x {kwargs['instance_type']}")
        print(f"created model {name}, endpoint config and endpoint {endpoint} ({kind}{on_ami}) "
              f"from {model_data}")
        assert predictor is not None, "Model.deploy returns a Predictor with predictor_cls"
    save_state(endpoint=endpoint, model=name)
    if args.autoscale_max:
        configure_autoscaling(ctx.boto, endpoint, args.instance_count, args.autoscale_max,
                              args.autoscale_target)
    print(f"try it: python deploy.py predict --endpoint {endpoint} tests/data/dogs/*.jpg")
    return 0
