"""The training job's error type and its failure file.

SageMaker reads the first 1,024 characters of ``/opt/ml/output/failure`` as the job's
FailureReason (AWS doc: "How Amazon SageMaker Processes Training Output"). The sagemaker-training
toolkit writes ``str(exc)`` there for its ``ClientError`` family and a traceback for anything else,
and keeps a failure file that already exists; so user errors raise ``TrainingError`` (a
ClientError) with a one-line cause, and worker processes write the file themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from sagemaker_training.errors import ClientError

FAILURE_REASON_MAX_CHARS = 1024


class TrainingError(ClientError):
    """A failure whose cause is the job's input or environment, not a bug: its message is the
    job's FailureReason, so it names the hyperparameter, channel or file and says what to do."""


def write_failure(output_dir: Path, reason: str) -> bool:
    """Write ``reason`` to ``output_dir/failure`` unless a failure file exists already (the
    first cause wins, as with the toolkit). Returns True if this call wrote it."""
    path = Path(output_dir) / "failure"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(reason)
    return True
