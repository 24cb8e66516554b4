"""SageMaker endpoints: whether one exists, and the SDK Predictor that sends it photos (files
or URLs) and reads their top-k breeds."""

from __future__ import annotations

import urllib.parse
import urllib.request
from pathlib import Path

from deployment.errors import UserError, is_not_found


def endpoint_status(sm, name: str) -> str | None:
    """The endpoint's status (``InService``, ...), or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


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
