"""SageMaker endpoints: whether one exists, an asynchronous endpoint's configuration, and the
SDK Predictors that send them photos (files or URLs) and read their top-k breeds."""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from pathlib import Path

from deployment.errors import UserError, is_not_found
from deployment.models import check_seconds
from deployment.options import AsyncOptions
from serve.settings_table import ASYNC_MAX_PAYLOAD_MB

# InvokeEndpointAsync's InvocationTimeoutSeconds default (API reference): 15 minutes.
ASYNC_TIMEOUT_S = 900
MAX_CONCURRENT_INVOCATIONS = 1000  # AsyncInferenceClientConfig's bound


def endpoint_status(sm, name: str) -> str | None:
    """The endpoint's status (``InService``, ...), or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def check_async_options(options: AsyncOptions) -> None:
    """The asynchronous options are given only with --async, and within SageMaker's bounds.

    Raises:
        UserError: one line naming the option.
    """
    given = options.given()
    if not options.enabled:
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is for asynchronous endpoints: "
                            "add --async")
        return
    if options.invocation_timeout is not None:
        check_seconds("--invocation-timeout", options.invocation_timeout)
    n = options.max_concurrent_invocations
    if n is not None and not 1 <= n <= MAX_CONCURRENT_INVOCATIONS:
        raise UserError(f"--async-concurrency {n}: from 1 to "
                        f"{MAX_CONCURRENT_INVOCATIONS} (MaxConcurrentInvocationsPerInstance)")
    for option in ("sns_success", "sns_error"):
        topic = getattr(options, option)
        if topic is not None and not topic.startswith("arn:aws:sns:"):
            raise UserError(f"--{option.replace('_', '-')} {topic}: an SNS topic ARN, "
                            "arn:aws:sns:REGION:ACCOUNT:NAME")


def async_environment(options: AsyncOptions) -> dict[str, str]:
    """What an asynchronous endpoint's container needs beside the real-time environment: the
    1 GB payload cap, the invocation's timeout as its deadline, and a queue per worker that holds
    every request SageMaker may send an instance at once (one worker may be sent all of them, and
    more never come).
    The per-image budgets (pixels, decode memory, images per request) stay as they are."""
    env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": str(ASYNC_MAX_PAYLOAD_MB),
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(options.invocation_timeout or ASYNC_TIMEOUT_S)}
    if options.max_concurrent_invocations:
        env["SAGEMAKER_MODEL_SERVER_MAX_QUEUE"] = str(options.max_concurrent_invocations)
    return env


def async_config(ctx, options: AsyncOptions, endpoint: str):
    """The SDK's AsyncInferenceConfig: answers and errors under S3 prefixes of the endpoint's
    name (or --output-path, --failure-path), SNS topics when given, and
    MaxConcurrentInvocationsPerInstance when given (else SageMaker chooses)."""
    from sagemaker.async_inference import AsyncInferenceConfig

    topics = {key: value for key, value in (("SuccessTopic", options.sns_success),
                                            ("ErrorTopic", options.sns_error)) if value}
    return AsyncInferenceConfig(
        output_path=options.output_path or f"{ctx.s3_prefix()}/async-output/{endpoint}",
        failure_path=options.failure_path or f"{ctx.s3_prefix()}/async-failures/{endpoint}",
        max_concurrent_invocations_per_instance=options.max_concurrent_invocations,
        notification_config=topics or None)


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


def _rows(source: str, answer: dict) -> list[list]:
    """Table rows (photo, rank, breed, probability) of one photo's answer."""
    return [[Path(source).name if rank == 1 else "", rank, p["label"], f"{p['probability']:.3f}"]
            for rank, p in enumerate(answer["predictions"][0]["top_k"], 1)]


def predict_table(predictor, sources: list[str], k: int) -> list[list]:
    """Rows (photo, rank, breed, probability) of each photo's top ``k`` through ``predictor``."""
    from sagemaker.serializers import IdentitySerializer

    rows = []
    for source in sources:
        data = read_image(source)
        predictor.serializer = IdentitySerializer(content_type(data))
        rows += _rows(source, predictor.predict(data, custom_attributes=f"k={k}"))
    return rows


def async_predict_table(predictor, sources: list[str], k: int, input_prefix: str,
                        timeout_s: int, wait_s: float | None, poll_s: float = 5.0
                        ) -> tuple[list[list], list[str]]:
    """Each photo uploaded under ``input_prefix`` (S3) and queued on the asynchronous endpoint
    behind ``predictor`` (InvokeEndpointAsync, InvocationTimeoutSeconds ``timeout_s``), all
    before any answer is waited for; then the answers read from S3 as they land, every
    ``poll_s`` seconds for up to ``wait_s`` in all (None: not waiting). Returns the table rows
    of the answers that came, in the photos' order, and a line for each photo whose answer did
    not come (where it will land) or is an error (where it is).
    """
    from sagemaker.exceptions import AsyncInferenceModelError, ObjectNotExistedError
    from sagemaker.predictor_async import AsyncPredictor
    from sagemaker.serializers import IdentitySerializer

    queued = []
    for i, source in enumerate(sources):
        data = read_image(source)
        predictor.serializer = IdentitySerializer(content_type(data))
        queued.append(AsyncPredictor(predictor).predict_async(
            data=data, input_path=f"{input_prefix.rstrip('/')}/{i:05d}-{Path(source).name}",
            initial_args={"ContentType": content_type(data), "CustomAttributes": f"k={k}",
                          "InvocationTimeoutSeconds": timeout_s}))
    # Polled here rather than with the SDK's waiter, whose failure-path thread goes on polling
    # S3 (and keeps the program alive) until its attempts run out.
    done: dict[int, dict | str] = {}
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        for i, response in enumerate(queued):
            if i in done:
                continue
            try:
                done[i] = response.get_result()
            except ObjectNotExistedError:
                pass
            except AsyncInferenceModelError as exc:
                done[i] = f"failed ({exc}); see {response.failure_path}"
        if len(done) == len(queued) or deadline is None or time.monotonic() + poll_s > deadline:
            break
        time.sleep(poll_s)
    rows, pending = [], []
    for i, (source, response) in enumerate(zip(sources, queued)):
        if isinstance(done.get(i), dict):
            rows += _rows(source, done[i])
        elif i in done:
            pending.append(f"{Path(source).name}: {done[i]}")
        else:
            pending.append(f"{Path(source).name}: not answered yet; it will land at "
                           f"{response.output_path}")
    return rows, pending
