"""``deploy.py local``: train and deploy with the SDK's local mode, then classify and stop."""

from __future__ import annotations

from pathlib import Path

from deployment import sessions
from deployment.endpoints import make_predictor_cls, predict_table
from deployment.errors import UserError
from deployment.hyperparameters import parse_hyperparameters
from deployment.output import print_table
from deployment.settings import DEFAULT_REPOSITORY, ROOT, SPLITS, Context, timestamp
from deployment.training import make_estimator

NAME = "local"
HELP = "train and deploy on local Docker"
JOB_OPTIONS = True


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("--mode", choices=["local", "local_gpu"], default="local")
    p.add_argument("--image-tag", default=f"{DEFAULT_REPOSITORY}:latest",
                   help="local image (default sagemaker-dog-breeds:latest)")
    p.add_argument("--data-dir", required=True, help="local ImageFolder tree")
    p.add_argument("--output", default="out/local", help="where model.tar.gz goes")
    p.add_argument("--images", nargs="*", help="photos to classify (default tests/data/dogs)")
    p.add_argument("-k", "--top-k", type=int, default=3)


LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"


def make_local_session(region: str):
    """The SDK's LocalSession (a Docker engine, or podman's service through DOCKER_HOST)."""
    from sagemaker.local import LocalSession

    session = LocalSession(boto_session=sessions.make_boto_session(region))
    session.config = {"local": {"local_code": True}}
    return session


def run(ctx: Context, args) -> int:
    """Train on local folders, deploy the model on the local engine, classify, stop."""
    from sagemaker.model import Model

    region = ctx.get("region") or "us-east-1"
    session = make_local_session(region)
    data = Path(args.data_dir).resolve()
    if not (data / "train").is_dir():
        raise UserError(f"--data-dir {data}: expected train/ valid/ [test/] in ImageFolder layout"
                        " (make one with: python -m tools.datasets digits out/digits)")
    image = args.image_tag
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    hyperparameters = parse_hyperparameters(args.hp)
    estimator = make_estimator(ctx, args, hyperparameters, session=session, image=image,
                               role=LOCAL_ROLE, output_path=f"file://{out}", spot=False)
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
