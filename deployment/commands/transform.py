"""``deploy.py transform``: a batch transform job over an S3 folder of photos, waited for with
progress, then a summary: every photo's top-1 breed, the failures, and the accuracy per class
when the photos are in class folders."""

from __future__ import annotations

import sys

from container import gpu_hosts
from deployment.aliases import renamed
from deployment import transform
from deployment.errors import UserError
from deployment.models import (add_artifact_arguments, base_environment, check_seconds,
                               model_data_uri, serving_environment)
from deployment.options import ArtifactOptions, ServingOptions
from deployment.output import print_table
from deployment.settings import Context, save_state, timestamp
from serve.settings_table import DEFAULT_BATCH_TIMEOUT_S

NAME = "transform"
HELP = "classify an S3 folder of photos (batch transform)"
JOB_OPTIONS = False
# No TransformAmiVersion has a driver the default (CUDA 13) image runs on: CPU by default.
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--input", help="S3 folder of photos, at any depth (class folders give "
                                   "the accuracy per class)")
    renamed(p, "--output-path", "--output", help="S3 folder of the .out answers (default "
                                    "s3://BUCKET/PREFIX/transform-output/JOB/)")
    p.add_argument("--jsonlines", action="store_true",
                   help="pack the photos into JSON Lines files and send many a request "
                        "(SplitType Line, MultiRecord) instead of one photo a request")
    p.add_argument("--attach", metavar="JOB", help="wait for and summarise this job instead")
    p.add_argument("--job-name", help="default dog-breeds-transform-YYMMDD-HHMMSS")
    add_artifact_arguments(p)
    p.add_argument("--instance-type", dest="transform_instance_type",
                   default=DEFAULT_INSTANCE_TYPE, help=f"default {DEFAULT_INSTANCE_TYPE}")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--invocation-timeout", type=int, default=DEFAULT_BATCH_TIMEOUT_S,
                   metavar="S", help="seconds one request may take, 1-3600 (default "
                                     f"{DEFAULT_BATCH_TIMEOUT_S}, InvocationsTimeoutInSeconds')")
    p.add_argument("--transform-ami-version", default="auto", metavar="AMI",
                   help="TransformAmiVersion on GPU instance types (auto: the newest driver "
                        f"that suits the image); known: {', '.join(gpu_hosts.TRANSFORM_AMIS)}")
    p.add_argument("--image-cuda", type=int, choices=sorted(gpu_hosts.MIN_DRIVER_BRANCH),
                   default=gpu_hosts.IMAGE_CUDA_MAJOR,
                   help="the image's CUDA major version (12: a TORCH_CUDA build, "
                        f"docs/platform.md; default {gpu_hosts.IMAGE_CUDA_MAJOR})")
    p.add_argument("--no-wait", dest="wait", action="store_false")


def transform_ami(args) -> str | None:
    """The job's TransformAmiVersion (None on CPU instance types), with no AWS call.

    Raises:
        UserError: a GPU instance type or AMI the image cannot run on (a CUDA 13 image on any:
            the transform AMIs have drivers 470 and 535).
    """
    try:
        return gpu_hosts.choose_ami(args.transform_instance_type, args.transform_ami_version,
                                    "transform", cuda_major=args.image_cuda)
    except gpu_hosts.HostError as exc:
        raise UserError(str(exc)) from exc


def start(ctx: Context, args, job: str) -> tuple[transform.Inputs, str]:
    """Create the job's model and the job; returns its inputs and output folder."""
    from sagemaker.model import Model

    if args.instance_count < 1:
        raise UserError(f"--instance-count {args.instance_count}: at least 1")
    check_seconds("--invocation-timeout", args.invocation_timeout)
    ami = transform_ami(args)
    env = serving_environment(ServingOptions.from_args(args), base_environment(job), {
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(args.invocation_timeout)},
        container="the transform job's container")
    s3 = ctx.boto.client("s3")
    photos = transform.list_photos(s3, args.input)
    model_data = model_data_uri(ctx, ArtifactOptions.from_args(args))
    output = transform.folder_uri(args.output_path or f"{ctx.s3_prefix()}/transform-output/{job}")
    if args.jsonlines:
        inputs, longest = transform.pack_jsonlines(
            s3, photos, f"{ctx.s3_prefix()}/transform-input/{job}")
    else:
        inputs = transform.write_manifest(
            s3, photos, f"{ctx.s3_prefix()}/transform-input/{job}.manifest")
        longest = max(photos.keys.values())
    payload = transform.payload_mb(longest, args.jsonlines)
    Model(image_uri=ctx.image(), model_data=model_data, role=ctx.role(), env=env, name=job,
          sagemaker_session=ctx.session).create(instance_type=args.transform_instance_type)
    try:
        ctx.session.sagemaker_client.create_transform_job(**transform.request(
            job, job, inputs, output, args.transform_instance_type, args.instance_count,
            args.invocation_timeout, ami, args.jsonlines, payload))
    except BaseException:
        _delete_model(ctx.session.sagemaker_client, job)  # no job will ever use it
        raise
    save_state(transform_job=job)
    how = f"{len(inputs.keys)} JSON Lines files" if args.jsonlines else "one a request"
    print(f"started transform job {job}: {len(photos.keys)} photos from {photos.uri} ({how}, "
          f"MaxPayloadInMB {payload}, on {args.instance_count} x {args.transform_instance_type}"
          f"{', ' + ami if ami else ''}), answers to {output}")
    return inputs, output


def attach(ctx: Context, job: str) -> tuple[transform.Inputs, str]:
    """The inputs and output folder of an existing job."""
    desc = ctx.session.sagemaker_client.describe_transform_job(TransformJobName=job)
    uri = desc["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    s3 = ctx.boto.client("s3")
    if desc["TransformInput"].get("SplitType") == "Line":
        index = transform.read_index(s3, uri)
        inputs = transform.Inputs(uri, {name: 0 for name in index}, index)
    elif desc["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile":
        inputs = transform.read_manifest(s3, uri)
    else:
        inputs = transform.list_photos(s3, uri)
    return inputs, transform.folder_uri(desc["TransformOutput"]["S3OutputPath"])


def summarise(ctx: Context, job: str, inputs: transform.Inputs, output: str) -> int:
    """Wait for the job, print every photo's top-1 breed, the failures and the accuracy per
    class, and delete the job's model; returns the exit code (1 when any photo failed)."""
    sm, s3 = ctx.session.sagemaker_client, ctx.boto.client("s3")
    try:
        desc = transform.wait(sm, s3, job, output, len(inputs.keys))
    except KeyboardInterrupt:
        print(f"the job runs on; python deploy.py transform --attach {job} waits for it again",
              file=sys.stderr)
        raise
    results = transform.answers(s3, inputs, output, desc.get("FailureReason"))
    print_table(["photo", "breed", "probability"],
                [[r.photo, r.label or "-", f"{r.probability:.3f}" if r.label else "-"]
                 for r in results])
    failed = [r for r in results if r.error]
    seconds = (desc["TransformEndTime"] - desc["TransformStartTime"]).total_seconds() if \
        desc.get("TransformEndTime") and desc.get("TransformStartTime") else None
    concurrency = desc.get("MaxConcurrentTransforms")
    print(f"\ntransform job {job}: {desc['TransformJobStatus']}"
          + (f" in {seconds:.0f} s" if seconds is not None else "")
          + f"; {len(results)} photos, {len(failed)} failed"
          + (f"; MaxConcurrentTransforms {concurrency}" if concurrency else
             "; MaxConcurrentTransforms: the container's suggestion")
          + f"; answers in {output}")
    for r in failed[:20]:
        print(f"failed: {r.photo}: {r.error}")
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more")
    rows = transform.accuracy(results)
    if rows:
        print()
        print_table(["class", "photos", "correct", "accuracy"], rows)
    _delete_model(sm, job)
    return 1 if failed or desc["TransformJobStatus"] != "Completed" else 0


def _delete_model(sm, job: str) -> None:
    """Delete the model this verb made for ``job`` (named after it, its metrics too), which the
    ended job no longer needs (its model.tar.gz stays in S3); any other model is left alone."""
    from botocore.exceptions import ClientError

    from deployment.errors import is_not_found

    try:
        env = sm.describe_model(ModelName=job)["PrimaryContainer"].get("Environment", {})
        if env.get("SERVE_ENDPOINT_NAME") == job:
            sm.delete_model(ModelName=job)
            print(f"deleted model {job}")
    except ClientError as exc:
        if not is_not_found(exc):
            raise


def run(ctx: Context, args) -> int:
    """Start a transform job (or attach to one), then wait and summarise unless --no-wait."""
    if args.attach:
        job = args.attach
        inputs, output = attach(ctx, job)
    else:
        if not args.input:
            raise UserError("--input s3://BUCKET/PREFIX/photos/ is needed (or --attach JOB)")
        job = args.job_name or f"dog-breeds-transform-{timestamp()}"
        inputs, output = start(ctx, args, job)
    if not args.wait:
        print(f"wait for it with: python deploy.py transform --attach {job}")
        return 0
    return summarise(ctx, job, inputs, output)
