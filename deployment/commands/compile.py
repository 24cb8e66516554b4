"""``deploy.py compile``: a model.tar.gz that carries its compiled programs for an instance type,
made by the image's own ``compile`` entry (serve/precompile.py) in a SageMaker Processing job on
that type. Endpoints of that type then start compiled: no compile on a new instance, the first
requests as fast as the rest (autoscaling, blue/green updates, serverless cold starts)."""

from __future__ import annotations

from container import gpu_hosts
from deployment.aliases import renamed
from deployment.errors import UserError
from deployment.models import add_artifact_arguments, model_data_uri, serving_environment
from deployment.options import ArtifactOptions, ServingOptions
from deployment.settings import Context, save_state, timestamp

NAME = "compile"
HELP = "ship compiled programs for an instance type in the model (Processing job)"
JOB_OPTIONS = False
INPUT = "/opt/ml/processing/input/model"  # serve/precompile.py's defaults
OUTPUT = "/opt/ml/processing/output"


def add_arguments(p) -> None:
    """This verb's options."""
    add_artifact_arguments(p)
    p.add_argument("--instance-type", dest="compile_instance_type", required=True,
                   help="the endpoint's instance type: the packages are built on it and only "
                        "hosts of its kind load them")
    renamed(p, "--output-path", "--output", help="S3 folder of the new model.tar.gz (default "
                                    "s3://BUCKET/PREFIX/compiled/JOB/)")
    p.add_argument("--job-name", help="default dog-breeds-compile-YYMMDD-HHMMSS")
    p.add_argument("--no-wait", dest="wait", action="store_false")


def run(ctx: Context, args) -> int:
    """Run the compile job; print (and remember for deploy) the new model.tar.gz."""
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor

    if not args.compile_instance_type.startswith("ml."):
        raise UserError(f"--instance-type {args.compile_instance_type}: a SageMaker instance "
                        "type such as ml.c7i.xlarge")
    try:
        gpu_hosts.check_host(args.compile_instance_type)
    except gpu_hosts.HostError as exc:
        raise UserError(str(exc)) from exc
    # The endpoint's serving options pick the precision and batch sizes compiled.
    env = serving_environment(ServingOptions.from_args(args), {},
                              container="the compile job's container")
    model_data = model_data_uri(ctx, ArtifactOptions.from_args(args))
    name = args.job_name or f"dog-breeds-compile-{timestamp()}"
    output = (args.output_path or f"{ctx.s3_prefix()}/compiled/{name}").rstrip("/")
    processor = Processor(role=ctx.role(), image_uri=ctx.image(), instance_count=1,
                          instance_type=args.compile_instance_type, entrypoint=["compile"],
                          env=env or None, base_job_name="dog-breeds-compile",
                          sagemaker_session=ctx.session, max_runtime_in_seconds=3600)
    processor.run(inputs=[ProcessingInput(source=model_data, destination=INPUT)],
                  outputs=[ProcessingOutput(source=OUTPUT, destination=output)],
                  job_name=name, wait=args.wait, logs=args.wait)
    compiled = f"{output}/model.tar.gz"
    save_state(compile_job=name, compiled_model_data=compiled)
    print(f"{'ran' if args.wait else 'started'} compile job {name} on "
          f"{args.compile_instance_type}: {model_data} -> {compiled}")
    print(f"deploy it on {args.compile_instance_type}: python deploy.py deploy --model-data "
          f"{compiled} --instance-type {args.compile_instance_type}")
    return 0
