"""``serve``: start gunicorn with the Flask app on port 8080 (SageMaker's `docker run IMAGE serve`).

The gunicorn master replaces this process (exec), so SIGTERM from SageMaker reaches it directly.
Settings are checked first, so a bad variable fails with one clear line instead of a crash loop.
"""

from __future__ import annotations

import os
import sys

from serve.config import Settings


def main(argv: list[str] | None = None) -> int:
    """Exec gunicorn; returns 2 (with a message on stderr) for a bad setting."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    print(f"serve: {settings.workers} worker(s) on port {settings.port}, model from "
          f"{settings.model_dir}, {settings.gpus} GPU(s)", file=sys.stderr, flush=True)
    args = [sys.executable, "-m", "gunicorn", "--config", "python:serve.gunicorn_conf",
            "serve.app:create_app()"]
    os.execv(sys.executable, args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
