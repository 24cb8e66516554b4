"""``deploy.py deploy``: model, endpoint config and endpoint, with optional autoscaling.
``--update`` is ``deploy.py update`` with its default strategy (deployment/updates.py)."""

from __future__ import annotations

import sys

from deployment import ecr, endpoint_config, models, versions
from deployment.autoscaling import (BACKLOG_TARGET, invocations_target, vcpus,
                                    configure_async_autoscaling, configure_autoscaling)
from deployment.endpoints import (ASYNC_TIMEOUT_S, async_config, async_environment,
                                  check_async_options, endpoint_status, make_predictor_cls)
from deployment.aliases import renamed
from deployment.errors import UserError
from deployment.settings import Context, save_state
from deployment.options import ArtifactOptions, AsyncOptions, ServingOptions, UpdateOptions
from deployment.updates import pool_types, update_model

NAME = "deploy"
HELP = "model, endpoint config and endpoint"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    models.add_model_arguments(p)
    p.add_argument("--autoscale-max", type=int, help="target-tracking autoscaling up to N")
    p.add_argument("--autoscale-target", type=float,
                   help="invocations per instance per MINUTE (SageMakerVariantInvocationsPer"
                        "Instance; default: from the instance type's vCPUs, "
                        f"{invocations_target('ml.m5.xlarge'):g} on 4 vCPUs: half the measured "
                        "throughput); with --async, queued requests per instance "
                        f"(ApproximateBacklogSizePerInstance, default {BACKLOG_TARGET:g})")
    a = p.add_argument_group("asynchronous endpoint (--async)")
    a.add_argument("--async", dest="asynchronous", action="store_true",
                   help="requests from S3 (up to 1 GB), answers to S3")
    a.add_argument("--output-path", help="S3 prefix of the answers (default "
                                         "s3://BUCKET/PREFIX/async-output/ENDPOINT)")
    a.add_argument("--failure-path", help="S3 prefix of the errors (default "
                                          "s3://BUCKET/PREFIX/async-failures/ENDPOINT)")
    a.add_argument("--sns-success", metavar="TOPIC_ARN", help="SNS topic told of each answer")
    a.add_argument("--sns-error", metavar="TOPIC_ARN", help="SNS topic told of each error")
    renamed(a, "--async-concurrency", "--max-concurrent-invocations",
            dest="max_concurrent_invocations", type=int, metavar="N",
            help="asynchronous: requests each instance works on at once, 1-1000 "
                 "(MaxConcurrentInvocationsPerInstance; default: SageMaker's)")
    a.add_argument("--invocation-timeout", type=int, metavar="S",
                   help=f"seconds one request may take, 1-3600 (default {ASYNC_TIMEOUT_S}, "
                        "InvokeEndpointAsync's)")
    a.add_argument("--min-instances", type=int, metavar="N",
                   help="autoscaling's minimum (default --instance-count); 0 scales an "
                        "asynchronous endpoint to zero when its queue is empty")
    p.add_argument("--update", action="store_true",
                   help="a new model behind an existing endpoint: python deploy.py update with "
                        "its default strategy (see its --help for the others)")
    p.add_argument("--no-wait", dest="wait", action="store_false")


def run(ctx: Context, args) -> int:
    """Create a real-time, serverless or asynchronous endpoint (re-running on an existing one
    changes nothing), or with --update put a new model behind one (deploy.py update)."""
    from sagemaker.model import Model
    from sagemaker.serverless import ServerlessInferenceConfig

    if args.serverless and args.asynchronous:
        raise UserError("--serverless and --async exclude each other: pick one")
    if args.update:
        if args.autoscale_max and args.instance_count is None:
            raise UserError("--autoscale-max with --update: pass --instance-count too (the "
                            "autoscaling minimum); an update keeps the endpoint's autoscaling")
        code = update_model(ctx, UpdateOptions.from_args(args))
        if code == 0 and args.autoscale_max:
            configure_autoscaling(ctx.boto, ctx.get("endpoint"), args.instance_count,
                                  args.autoscale_max, args.autoscale_target or invocations_target(
                                      _instance_type(ctx, ctx.get("endpoint"))))
        return code
    types = endpoint_config.parse_types(args.instance_types)
    if types and (args.serverless or args.endpoint_instance_type):
        raise UserError("--instance-types: pools of instances replace --instance-type, and a "
                        "serverless endpoint has no instances")
    if args.provision_timeout is not None and not types:
        raise UserError("--provision-timeout applies to instance pools: add --instance-types")
    if args.serverless and (args.metrics_frequency or args.no_detailed_observability):
        raise UserError("--metrics-frequency and --no-detailed-observability apply to endpoints "
                        "on instances; a serverless endpoint publishes SageMaker's own metrics")
    instance_type = (None if args.serverless else types[0] if types
                     else ctx.get("endpoint_instance_type"))
    ami = (endpoint_config.pools_ami(types, args.inference_ami_version or "auto") if types
           else models.inference_ami(instance_type, args.inference_ami_version or "auto"))
    metrics = ({} if args.serverless else {"MetricsConfig": endpoint_config.metrics_config(
        args.metrics_frequency, not args.no_detailed_observability)})
    endpoint = ctx.get("endpoint")
    asynchronous = AsyncOptions.from_args(args)
    check_async_options(asynchronous)
    instance_count = args.instance_count or models.DEFAULT_INSTANCE_COUNT
    scaling = autoscaling_range(args, instance_count)
    env = models.serving_environment(ServingOptions.from_args(args),
                                     models.base_environment(endpoint),
                                     async_environment(asynchronous) if asynchronous.enabled
                                     else None)
    models.check_capture(args.capture)
    sm = ctx.session.sagemaker_client
    status = endpoint_status(sm, endpoint)
    if status:
        print(f"endpoint {endpoint} already exists ({status}); nothing done. Put a new model "
              "behind it with python deploy.py update, or run python deploy.py delete first")
        return 0
    model_data = models.model_data_uri(ctx, ArtifactOptions.from_args(args))
    image = ctx.image()
    if args.serverless and (warning := ecr.serverless_size_warning(ctx.boto, image)):
        print(warning, file=sys.stderr)
    name = versions.new_name(endpoint)
    model = Model(image_uri=image, model_data=model_data, role=ctx.role(), env=env,
                  name=name, predictor_cls=make_predictor_cls(), sagemaker_session=ctx.session)
    kwargs = {}
    if args.serverless:
        kwargs["serverless_inference_config"] = ServerlessInferenceConfig(
            memory_size_in_mb=args.memory_mb or models.DEFAULT_MEMORY_MB,
            max_concurrency=args.max_concurrency or models.DEFAULT_MAX_CONCURRENCY)
    else:
        startup, download = models.startup_timeouts(ctx.boto, image, model_data,
                                                    gpu=ami is not None)
        kwargs.update(initial_instance_count=instance_count, instance_type=instance_type,
                      container_startup_health_check_timeout=args.startup_timeout or startup,
                      model_data_download_timeout=download)
        if args.asynchronous:
            kwargs["async_inference_config"] = async_config(ctx, asynchronous, endpoint)
    if args.capture is not None:
        kwargs["data_capture_config"] = models.data_capture(ctx, endpoint, args.capture)
    # The tag ties the model, the endpoint config and the endpoint to it (deployment/versions.py).
    with endpoint_config.extended(ctx.session.sagemaker_client, metrics, types,
                                  args.provision_timeout):
        predictor = model.deploy(endpoint_name=endpoint, wait=args.wait,
                                 inference_ami_version=ami, tags=versions.tags(endpoint), **kwargs)
    shape = f"{instance_count} x {' or '.join(types) if types else instance_type}"
    kind = ("serverless" if args.serverless else f"asynchronous, {shape}" if args.asynchronous
            else shape)
    on_ami = f", InferenceAmiVersion {ami}" if ami else ""
    print(f"created model {name}, endpoint config and endpoint {endpoint} ({kind}{on_ami}) "
          f"from {model_data}")
    assert predictor is not None, "Model.deploy returns a Predictor with predictor_cls"
    save_state(endpoint=endpoint, model=name,
               **({"async_invocation_timeout": args.invocation_timeout or ASYNC_TIMEOUT_S}
                  if args.asynchronous else {}))
    if scaling and args.asynchronous:
        configure_async_autoscaling(ctx.boto, endpoint, *scaling,
                                    args.autoscale_target or BACKLOG_TARGET)
    elif scaling:
        smallest = min(types or [instance_type], key=vcpus)
        configure_autoscaling(ctx.boto, endpoint, *scaling,
                              args.autoscale_target or invocations_target(smallest))
    print(f"try it: python deploy.py predict {'--async ' if args.asynchronous else ''}"
          f"--endpoint {endpoint} tests/data/dogs/*.jpg")
    return 0


def _instance_type(ctx: Context, endpoint: str) -> str:
    """The instance type an endpoint's config runs (its smallest, for pools)."""
    sm = ctx.session.sagemaker_client
    config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][:1]
    return min(pool_types(variant) or [variant["InstanceType"]], key=vcpus)


def autoscaling_range(args, instance_count: int) -> tuple[int, int] | None:
    """(minimum, maximum) instances of the autoscaling that --autoscale-max asks for, None
    without it; checked before any AWS call.

    Raises:
        UserError: --min-instances without --autoscale-max, 0 for an endpoint that is not
            asynchronous (only those scale to zero), or a maximum below the minimum.
    """
    low = instance_count if args.min_instances is None else args.min_instances
    option = "--instance-count" if args.min_instances is None else "--min-instances"
    if args.min_instances is not None and not args.autoscale_max:
        raise UserError("--min-instances needs --autoscale-max N: it is autoscaling's minimum")
    if not args.autoscale_max:
        return None
    if low < 0 or (low == 0 and not args.asynchronous):
        raise UserError(f"--min-instances {low}: at least 1, or 0 with --async (only "
                        "asynchronous endpoints scale to zero)")
    if args.autoscale_max < max(low, 1):
        raise UserError(f"--autoscale-max {args.autoscale_max} is below {option} "
                        f"{max(low, 1)}")
    return low, args.autoscale_max
