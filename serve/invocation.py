"""What an invocation carries and what it answers: request bodies to images and options, class
probabilities to the JSON response.

Requests (AWS doc "Use your own inference code with hosting services"):
- ``image/jpeg``, ``image/png`` or ``application/x-image``: one image as the body.
- ``application/json``: ``{"instances": [{"b64": "<base64 image>"}, ...], "k": 3,
  "probabilities": true}`` for several images in one request.
Options ``k`` (top-k, default 5 or the number of classes if fewer) and ``probabilities`` (all
class probabilities in class order) come from the JSON body, the
``X-Amzn-SageMaker-Custom-Attributes`` header (``k=3;probabilities=true``: InvokeEndpoint's
CustomAttributes, the only per-request channel SageMaker passes through) or the query string.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from serve.config import DEFAULT_TOP_K

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
OPTION_NAMES = ("k", "probabilities")


class ClientError(Exception):
    """A request the server cannot serve; becomes ``status`` with a JSON reason (and a
    Retry-After header when ``retry_after_s`` is set)."""

    def __init__(self, status: int, reason: str, retry_after_s: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after_s = status, reason, retry_after_s


def image_bodies(content_type: str, data: bytes) -> tuple[list[bytes], dict]:
    """The images a request carries and its JSON options (empty for a bare image).

    Raises:
        ClientError: 400 for JSON that is not valid, nested too deeply, or not of the
            ``instances`` form, and for bad base64.
    """
    if content_type != JSON_TYPE:
        return [data], {}
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ClientError(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"the body is not valid JSON: {exc}") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ClientError(400, 'expected {"instances": [{"b64": "<base64 image>"}, ...]} with at '
                               'least one instance')
    images = []
    for i, instance in enumerate(instances):
        b64 = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(b64, str):
            raise ClientError(400, f'instance {i} has no "b64" string')
        try:
            images.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise ClientError(400, f"instance {i}: invalid base64") from None
    return images, doc


def options(body_options: dict, header: str, query: dict, num_classes: int) -> tuple[int, bool]:
    """``(k, probabilities)`` from the JSON body, else the query string, else the
    CustomAttributes header (``k=3;probabilities=true``).

    Raises:
        ClientError: 400 for a ``k`` that is not an integer from 1 to ``num_classes``.
    """
    raw: dict = {}
    for part in header.replace(",", ";").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            raw[key.strip().lower()] = value.strip()
    raw.update({k: v for k, v in query.items() if k in OPTION_NAMES})
    raw.update({k: v for k, v in body_options.items() if k in OPTION_NAMES})
    if "k" not in raw:
        # The default is a convenience, not a demand: a 2-class model answers its top 2.
        k = min(DEFAULT_TOP_K, num_classes)
    else:
        k = raw["k"]
    try:
        if isinstance(k, bool):
            raise ValueError
        k = int(k)
    except (TypeError, ValueError):
        raise ClientError(400, f"k={k!r} is not an integer") from None
    if not 1 <= k <= num_classes:
        raise ClientError(400, f"k={k} must be between 1 and {num_classes}")
    probabilities = str(raw.get("probabilities", "false")).lower() in ("true", "1", "yes", "all")
    return k, probabilities


def predictions(probabilities: np.ndarray, classes: list[str], k: int, want_all: bool
                ) -> list[dict]:
    """The response's ``predictions``: per image its top ``k`` classes (label, index,
    probability; highest first) and, with ``want_all``, every probability in class order.
    ``probabilities``: float32 [n, classes]."""
    out = []
    for row in probabilities:
        top = np.argsort(-row, kind="stable")[:k]
        item = {"top_k": [{"label": classes[i], "index": int(i),
                           "probability": round(float(row[i]), 6)} for i in top]}
        if want_all:
            item["probabilities"] = [round(float(v), 6) for v in row]
        out.append(item)
    return out
