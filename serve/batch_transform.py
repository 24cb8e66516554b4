"""What the server tells a batch transform job: GET /execution-parameters.

SageMaker's contract (developer guide, "Use your own inference code with batch transform"): a
job that does not set MaxConcurrentTransforms, BatchStrategy or MaxPayloadInMB asks the
container, whose answer stands in for the missing ones; MaxPayloadInMB is at most 100 and
MaxConcurrentTransforms x MaxPayloadInMB at most 100 (API reference, CreateTransformJob).

The suggestion is ours: enough requests in flight for every worker to fill a batch while its next
one decodes (two max batches per worker: with one, the model waits for every batch's decodes),
within the product rule for the payload the job sets (SAGEMAKER_MAX_PAYLOAD_IN_MB) or, without
one, the real-time cap. Standard library only: deploy.py reads it too.
"""

from __future__ import annotations

# CreateTransformJob's rules (API reference).
TRANSFORM_MAX_PAYLOAD_MB = 100
MAX_PRODUCT_MB = 100
# Requests in flight per worker, in max batches: one running, one decoding.
BATCHES_IN_FLIGHT = 2


def suggested_concurrency(workers: int, max_batch_size: int, payload_mb: int) -> int:
    """MaxConcurrentTransforms for a server of ``workers`` workers batching up to
    ``max_batch_size`` images, with bodies of up to ``payload_mb`` MB: two max batches per
    worker, at most 100 // payload (at least 1)."""
    wanted = BATCHES_IN_FLIGHT * workers * max_batch_size
    return max(1, min(wanted, MAX_PRODUCT_MB // max(1, min(payload_mb,
                                                          TRANSFORM_MAX_PAYLOAD_MB))))


def execution_parameters(settings) -> dict:
    """The answer to GET /execution-parameters for ``settings`` (serve.config.Settings): the
    job's own values where it set them (SAGEMAKER_*), else the suggestion."""
    payload_mb = min(settings.max_payload_bytes // (1024 * 1024), TRANSFORM_MAX_PAYLOAD_MB)
    return {"MaxConcurrentTransforms": settings.max_concurrent_transforms,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": payload_mb}
