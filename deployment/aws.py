"""AWS helpers every verb shares: the boto3 session, ECR and endpoint checks, the estimator,
the predictor, autoscaling, and turning AWS errors into one line with the fix."""

from __future__ import annotations

from container import gpu_hosts
from deployment.settings import SPLITS, Context, UserError
from train.metrics import METRIC_DEFINITIONS


def make_boto_session(region: str | None):
    """The boto3 session every AWS call goes through (tests register botocore handlers on it)."""
    import boto3

    return boto3.Session(region_name=region)


def check_ecr_image(boto, image: str) -> None:
    """Fail early, with the fix, when an ECR image URI names a missing repository or tag.

    Raises:
        UserError: the repository or the tag is not in ECR.
    """
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


def is_not_found(exc) -> bool:
    """Whether a botocore ClientError says the named resource does not exist."""
    message = exc.response.get("Error", {}).get("Message", "")
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ResourceNotFound", "ResourceNotFoundException", "ValidationException") and (
        "not find" in message or "not exist" in message or "not found" in message.lower())


def endpoint_status(sm, name: str) -> str | None:
    """The endpoint's status (``InService``, ...), or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def data_channels(ctx: Context, data: str | None, pretrained: str | None) -> dict:
    """The job's channels: train, valid and test under ``data`` (default s3://BUCKET/PREFIX/
    data), and ``pretrained`` when given."""
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


def training_instance_warning(instance_type: str) -> str | None:
    """Before a training or tuning job, with no AWS call: refuse a GPU instance type the image
    cannot run on; for the others, the warning that the training fleet's driver is unknown
    (None on CPU instance types), for the caller to print once the job's inputs are checked.

    Raises:
        UserError: a GPU the image has no kernels for, or a GPU family container/gpu_hosts.py
            does not know.
    """
    try:
        return gpu_hosts.training_warning(instance_type)
    except gpu_hosts.HostError as exc:
        raise UserError(str(exc)) from exc


def make_estimator(ctx: Context, args, hyperparameters: dict, *, session=None,
                   image: str | None = None, role: str | None = None,
                   checkpoints: str | None = None, output_path: str | None = None,
                   spot: bool | None = None):
    """The generic SDK Estimator of a training job: our image, the metric definitions of
    train/metrics.py, managed spot unless --no-spot (``spot`` overrides), and our own
    debugger report unless --debugger-service.

    Raises:
        UserError: --max-wait below --max-run with spot.
    """
    from sagemaker.estimator import Estimator

    spot = getattr(args, "spot", False) if spot is None else spot
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


def make_predictor_cls():
    """The SDK Predictor class for the endpoint: image bytes in, the JSON answer out."""
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


def deregister_autoscaling(boto, endpoint: str) -> None:
    """Remove the endpoint variant's autoscaling, if any."""
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


def print_table(header: list[str], rows: list[list]) -> None:
    """Print ``rows`` under ``header`` in aligned columns."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


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
    from tools.datasets import DatasetError

    if isinstance(exc, (DatasetError, OSError, ValueError)):
        return f"{exc}"
    return None
