"""Fields the SageMaker Python SDK 2.x does not write, added to the requests it sends: the hook
(botocore's ``provide-client-params`` event, the first a call emits) changes the parameters
before botocore validates them, so the whole request is checked as every other call is."""

from __future__ import annotations

import contextlib
from typing import Callable


@contextlib.contextmanager
def adding(client, operation: str, change: Callable[[dict], None]):
    """While inside, ``change(params)`` edits every ``operation`` request (``CreateEndpointConfig``,
    ``CreateTrainingJob``) that the boto3 ``client`` sends, in place."""
    event = f"provide-client-params.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def handler(params, **_):
        change(params)

    client.meta.events.register(event, handler)
    try:
        yield
    finally:
        client.meta.events.unregister(event, handler)
