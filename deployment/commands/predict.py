"""``deploy.py predict``: top-k breeds of photos (files or URLs) from the endpoint."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

from deployment.aws import make_predictor_cls, print_table
from deployment.settings import Context, UserError

NAME = "predict"
HELP = "classify photos (files or URLs)"
JOB_OPTIONS = False


def add_arguments(p) -> None:
    """This verb's options."""
    p.add_argument("images", nargs="+")
    p.add_argument("-k", "--top-k", type=int, default=3)

def read_image(source: str, timeout: float = 30.0) -> bytes:
    """A photo's bytes from a file or an http(s) URL.

    Raises:
        UserError: no such file, or the URL cannot be fetched.
    """
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as r:
                return r.read()
        except OSError as exc:
            raise UserError(f"could not fetch {source}: {exc}") from exc
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    return path.read_bytes()


def content_type(data: bytes) -> str:
    """image/png for PNG bytes, else image/jpeg."""
    return "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"


def predict_table(predictor, sources: list[str], k: int) -> list[list]:
    """Rows (photo, rank, breed, probability) of each photo's top ``k`` through ``predictor``."""
    from sagemaker.serializers import IdentitySerializer

    rows = []
    for source in sources:
        data = read_image(source)
        predictor.serializer = IdentitySerializer(content_type(data))
        answer = predictor.predict(data, custom_attributes=f"k={k}")
        for rank, p in enumerate(answer["predictions"][0]["top_k"], 1):
            rows.append([Path(source).name if rank == 1 else "", rank, p["label"],
                         f"{p['probability']:.3f}"])
    return rows


def run(ctx: Context, args) -> int:
    """Classify each photo through the endpoint and print its top-k breeds."""
    endpoint = ctx.get("endpoint")
    predictor = make_predictor_cls()(endpoint, sagemaker_session=ctx.session)
    print_table(["image", "rank", "breed", "probability"],
                predict_table(predictor, args.images, args.top_k))
    return 0
