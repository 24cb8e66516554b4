"""``deploy.py deploy``: model, endpoint config and endpoint, with optional autoscaling.
``--update`` is ``deploy.py update`` with its default strategy (deployment/updates.py)."""

from __future__ import annotations

import sys

from deployment import ecr, models, versions
from deployment.autoscaling import configure_autoscaling
from deployment.endpoints import endpoint_status, make_predictor_cls
from deployment.errors import UserError
from deployment.settings import Context, save_state
from deployment.updates import update_model

NAME = "deploy"
HELP = "model, endpoint config and endpoint"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    models.add_model_arguments(p)
    p.add_argument("--autoscale-max", type=int, help="target-tracking autoscaling up to N")
    p.add_argument("--autoscale-target", type=float, default=100.0,
                   help="invocations per instance per minute (default 100)")
    p.add_argument("--async", dest="asynchronous", action="store_true")
    p.add_argument("--update", action="store_true",
                   help="a new model behind an existing endpoint: python deploy.py update with "
                        "its default strategy (see its --help for the others)")
    p.add_argument("--no-wait", dest="wait", action="store_false")


def run(ctx: Context, args) -> int:
    """Create a real-time, serverless or asynchronous endpoint (re-running on an existing one
    changes nothing), or with --update put a new model behind one (deploy.py update)."""
    from sagemaker.async_inference import AsyncInferenceConfig
    from sagemaker.model import Model
    from sagemaker.serverless import ServerlessInferenceConfig

    if args.serverless and args.asynchronous:
        raise UserError("--serverless and --async exclude each other: pick one")
    if args.update:
        if args.autoscale_max and args.instance_count is None:
            raise UserError("--autoscale-max with --update: pass --instance-count too (the "
                            "autoscaling minimum); an update keeps the endpoint's autoscaling")
        code = update_model(ctx, args)
        if code == 0 and args.autoscale_max:
            configure_autoscaling(ctx.boto, ctx.get("endpoint"), args.instance_count,
                                  args.autoscale_max, args.autoscale_target)
        return code
    instance_type = None if args.serverless else ctx.get("endpoint_instance_type")
    ami = models.inference_ami(instance_type, args.inference_ami_version or "auto")
    endpoint = ctx.get("endpoint")
    env = models.serving_environment(args, models.base_environment(endpoint))
    models.check_capture(args.capture)
    instance_count = args.instance_count or models.DEFAULT_INSTANCE_COUNT
    sm = ctx.session.sagemaker_client
    status = endpoint_status(sm, endpoint)
    if status:
        print(f"endpoint {endpoint} already exists ({status}); nothing done. Put a new model "
              "behind it with python deploy.py update, or run python deploy.py delete first")
        return 0
    model_data = models.model_data_uri(ctx, args)
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
        kwargs.update(initial_instance_count=instance_count, instance_type=instance_type,
                      container_startup_health_check_timeout=args.startup_timeout
                      or models.DEFAULT_STARTUP_TIMEOUT_S)
        if args.asynchronous:
            kwargs["async_inference_config"] = AsyncInferenceConfig(
                output_path=f"{ctx.s3_prefix()}/async-output/{endpoint}")
    if args.capture is not None:
        kwargs["data_capture_config"] = models.data_capture(ctx, endpoint, args.capture)
    # The tag ties the model, the endpoint config and the endpoint to it (deployment/versions.py).
    predictor = model.deploy(endpoint_name=endpoint, wait=args.wait, inference_ami_version=ami,
                             tags=versions.tags(endpoint), **kwargs)
    kind = ("serverless" if args.serverless else "asynchronous" if args.asynchronous
            else f"{instance_count} x {instance_type}")
    on_ami = f", InferenceAmiVersion {ami}" if ami else ""
    print(f"created model {name}, endpoint config and endpoint {endpoint} ({kind}{on_ami}) "
          f"from {model_data}")
    assert predictor is not None, "Model.deploy returns a Predictor with predictor_cls"
    save_state(endpoint=endpoint, model=name)
    if args.autoscale_max:
        configure_autoscaling(ctx.boto, endpoint, instance_count, args.autoscale_max,
                              args.autoscale_target)
    print(f"try it: python deploy.py predict --endpoint {endpoint} tests/data/dogs/*.jpg")
    return 0
