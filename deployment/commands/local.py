"""``deploy.py local``: train and deploy with the SDK's local mode, then classify and stop."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from deployment.aliases import renamed
from deployment import local_mode, sessions
from deployment.endpoints import make_predictor_cls, predict_table
from deployment.errors import UserError
from deployment.hyperparameters import parse_hyperparameters
from deployment.output import print_table
from deployment.settings import DEFAULT_REPOSITORY, ROOT, SPLITS, Context, timestamp
from deployment.options import TrainingLimits
from deployment.training import make_estimator
from train.hyperparameters import names

NAME = "local"
HELP = "train and deploy on local Docker"
# Only what local mode reads: spot, time limits, volumes, data in S3 and instance preferences are
# SageMaker's, and the SDK's local mode ignores them.
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--job-name")
    p.add_argument("--instance-count", type=int, help="training containers (default 1)")
    p.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                   help=f"hyperparameter, repeatable; names: {', '.join(names())}")
    p.add_argument("--mode", choices=["local", "local_gpu"], default="local")
    p.add_argument("--image-tag", default=f"{DEFAULT_REPOSITORY}:latest",
                   help="local image (default sagemaker-dog-breeds:latest)")
    p.add_argument("--data-dir", required=True, help="local ImageFolder tree")
    renamed(p, "--output-dir", "--output", default="out/local",
                   help="where each job's model.tar.gz and output.tar.gz go (OUTPUT/JOB/)")
    p.add_argument("--checkpoints", help="resume: a stopped job's output.tar.gz or a folder of "
                                         "checkpoints (the job's checkpoints channel)")
    p.add_argument("--port", type=int, default=8080, help="host port of the local endpoint")
    p.add_argument("--images", nargs="*", help="photos to classify (default tests/data/dogs)")
    p.add_argument("-k", "--top-k", type=int, default=3)


LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"


def run(ctx: Context, args) -> int:
    """Train on local folders (``--instance-count`` containers), deploy the model on the local
    engine, classify, stop; the containers the SDK made are removed at the end."""
    data = Path(args.data_dir).resolve()
    if not (data / "train").is_dir():
        raise UserError(f"--data-dir {data}: expected train/ valid/ [test/] in ImageFolder layout"
                        " (make one with: python -m tools.datasets digits out/digits)")
    inputs = {s: f"file://{data / s}" for s in SPLITS if (data / s).is_dir()}
    if args.checkpoints:
        checkpoints = Path(args.checkpoints).resolve()
        if not checkpoints.exists():
            raise UserError(f"--checkpoints {checkpoints}: no such file or folder")
        inputs["checkpoints"] = f"file://{checkpoints}"
    hyperparameters = parse_hyperparameters(args.hp)
    job_name = args.job_name or f"dog-breeds-local-{timestamp()}"
    out = Path(args.output_dir).resolve() / job_name
    out.mkdir(parents=True, exist_ok=True)
    container_root = Path(tempfile.mkdtemp(prefix="sagemaker-local-"))
    try:
        return _train_deploy_classify(ctx, args, inputs, hyperparameters, job_name, out,
                                      container_root)
    except (FileNotFoundError, ImportError) as exc:
        line = local_mode.engine_error(exc)
        if line is None:
            raise
        raise UserError(line) from exc
    finally:
        local_mode.remove_containers(container_root)
        shutil.rmtree(container_root, ignore_errors=True)


def _train_deploy_classify(ctx: Context, args, inputs: dict, hyperparameters: dict,
                           job_name: str, out: Path, container_root: Path) -> int:
    """The SDK's part of ``run``: fit, deploy, classify, delete the endpoint."""
    from sagemaker.model import Model

    region = ctx.get("region") or "us-east-1"
    session = local_mode.make_session(sessions.make_boto_session(region), args.port, container_root)
    image = args.image_tag
    limits = TrainingLimits(max_run=24 * 3600, volume_size=50, job_name=args.job_name)
    estimator = make_estimator(ctx, limits, hyperparameters,
                               session=session, image=image,
                               role=LOCAL_ROLE, output_path=f"file://{out}", spot=False)
    estimator.instance_type = args.mode
    # Only the command line's count: deploy.toml's is for SageMaker's instances.
    estimator.instance_count = args.instance_count or 1
    failed = None
    try:
        estimator.fit(inputs, job_name=job_name)
    except RuntimeError as exc:  # compose's exit code, when it passes it on
        failed = exc
    reason = local_mode.failure_reason(out)
    if reason is not None:
        raise UserError(f"the training job failed: {reason} (its model.tar.gz and "
                        f"output.tar.gz are in {out})") from failed
    if failed is not None:
        raise failed
    print(f"trained locally: {estimator.model_data}")
    model = Model(image_uri=image, model_data=estimator.model_data, role=LOCAL_ROLE,
                  predictor_cls=make_predictor_cls(), sagemaker_session=session)
    predictor = None
    try:
        predictor = model.deploy(initial_instance_count=1, instance_type=args.mode)
        photos = [str(p) for p in sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))]
        print_table(["image", "rank", "breed", "probability"],
                    predict_table(predictor, args.images or photos, args.top_k))
    finally:
        if predictor is not None:
            predictor.delete_endpoint()
        elif model.endpoint_name:
            # A start that failed (the SDK gives up after 120 s without a healthy /ping): its
            # docker-compose thread would otherwise keep this program from ever exiting.
            session.sagemaker_client.delete_endpoint(model.endpoint_name)
    print("local endpoint stopped")
    return 0
