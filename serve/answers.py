"""What an invocation answers: its options, its predictions, and the error it is refused with.

Options ``k`` (top-k, default 5 or the number of classes if fewer) and ``probabilities`` (all
class probabilities in class order) come from the request's JSON (a JSON body, or a JSON Lines
record), the query string or the ``X-Amzn-SageMaker-Custom-Attributes`` header
(``k=3;probabilities=true``: InvokeEndpoint's CustomAttributes, the only per-request channel
SageMaker passes through). Errors are ``{"status", "error", "reason"}``, as HTTP answers and as
the lines of a JSON Lines answer.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np

from serve.config import DEFAULT_TOP_K
from serve.errors import ClientError, Overloaded

OPTION_NAMES = ("k", "probabilities")
ERROR_NAMES = {400: "bad_request", 406: "not_acceptable", 408: "request_timeout",
               413: "payload_too_large", 415: "unsupported_media_type",
               500: "internal_server_error", 503: "service_unavailable"}


def error_body(status: int, reason: str) -> dict:
    """An error answer's JSON: ``{"status": 400, "error": "bad_request", "reason": "..."}``."""
    return {"status": status, "error": ERROR_NAMES.get(status, "error"), "reason": reason}


def check_deadline(deadline: float, done: int, count: int, what: str, fix: str) -> None:
    """Before the next of ``count`` images or lines (``what``), ``done`` decoded so far.

    Raises:
        serve.errors.Overloaded: ``deadline`` (time.monotonic()) has passed; the reason ends
            with ``fix``.
    """
    if time.monotonic() >= deadline:
        raise Overloaded(f"the invocation's deadline passed after {done} of its {count} {what} "
                         f"were decoded (SAGEMAKER_MODEL_SERVER_TIMEOUT){fix}", 1)


def load_json(data: bytes, what: str):
    """``data`` parsed as JSON (``what``: "the JSON body", "the line", named in a refusal).

    Raises:
        ClientError: 400 for JSON that is not valid or is nested too deeply.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ClientError(400, f"{what} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"{what} is not valid JSON: {exc}") from None


_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def options(body_options: dict, header: str, query: dict, num_classes: int) -> tuple[int, bool]:
    """``(k, probabilities)`` from the JSON body, else the query string, else the
    CustomAttributes header (``k=3;probabilities=true``). ``k`` is a JSON integer or a string of
    decimal digits; anything else (a float, an infinity or NaN, a bool, a huge number) is
    refused, not rounded.

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
        value = raw["k"]
        if isinstance(value, int) and not isinstance(value, bool):
            k = value
        elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            k = int(value)
        else:
            raise ClientError(400, f"k={value!r:.40} is not an integer")
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
