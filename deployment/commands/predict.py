"""``deploy.py predict``: top-k breeds of photos (files or URLs) from the endpoint, real-time or
asynchronous."""

from __future__ import annotations

from deployment.endpoints import (ASYNC_TIMEOUT_S, async_predict_table, make_predictor_cls,
                                  predict_table)
from deployment.output import print_table
from deployment.settings import Context, load_state, timestamp

NAME = "predict"
HELP = "classify photos (files or URLs)"
JOB_OPTIONS = False
DEFAULT_WAIT_S = 1200


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("images", nargs="+")
    p.add_argument("-k", "--top-k", type=int, default=3)
    p.add_argument("--async", dest="asynchronous", action="store_true",
                   help="through an asynchronous endpoint: upload each photo to S3, queue it, "
                        "read its answer from S3")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="S",
                   help=f"--async: seconds to wait for the answers in all (default "
                        f"{DEFAULT_WAIT_S})")
    p.add_argument("--no-wait", dest="wait", action="store_const", const=None,
                   help="--async: queue the photos and print where each answer will land")


def run(ctx: Context, args) -> int:
    """Classify each photo through the endpoint and print its top-k breeds; asynchronous: queue
    them all, then print the answers that came within --wait and where the others will land."""
    endpoint = ctx.get("endpoint")
    predictor = make_predictor_cls()(endpoint, sagemaker_session=ctx.session)
    if not args.asynchronous:
        print_table(["image", "rank", "breed", "probability"],
                    predict_table(predictor, args.images, args.top_k))
        return 0
    state = load_state()  # deploy --async remembers the endpoint's invocation timeout
    timeout_s = (state.get("async_invocation_timeout", ASYNC_TIMEOUT_S)
                 if state.get("endpoint") == endpoint else ASYNC_TIMEOUT_S)
    rows, pending = async_predict_table(
        predictor, args.images, args.top_k,
        f"{ctx.s3_prefix()}/async-input/{endpoint}/{timestamp()}", timeout_s, args.wait)
    if rows:
        print_table(["image", "rank", "breed", "probability"], rows)
    for line in pending:
        print(line)
    return 0
