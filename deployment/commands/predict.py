"""``deploy.py predict``: top-k breeds of photos (files or URLs) from the endpoint."""

from __future__ import annotations

from deployment.endpoints import make_predictor_cls, predict_table
from deployment.output import print_table
from deployment.settings import Context

NAME = "predict"
HELP = "classify photos (files or URLs)"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("images", nargs="+")
    p.add_argument("-k", "--top-k", type=int, default=3)


def run(ctx: Context, args) -> int:
    """Classify each photo through the endpoint and print its top-k breeds."""
    endpoint = ctx.get("endpoint")
    predictor = make_predictor_cls()(endpoint, sagemaker_session=ctx.session)
    print_table(["image", "rank", "breed", "probability"],
                predict_table(predictor, args.images, args.top_k))
    return 0
