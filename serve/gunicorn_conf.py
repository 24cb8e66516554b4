"""gunicorn settings for `serve` (read with ``--config python:serve.gunicorn_conf``).

gthread workers: one thread can answer /ping (within SageMaker's 2 s) while another runs an
inference. No preload: each worker imports the app and loads the model after the fork, because
CUDA does not survive a fork (DESIGN.md, pain point 5). SIGTERM: gunicorn stops accepting,
finishes requests in flight for up to ``graceful_timeout`` s, then exits; SageMaker sends
SIGKILL 30 s after SIGTERM, so that is 25 s.
"""

import logging
import os

from serve.config import GRACEFUL_TIMEOUT_S, Settings

_settings = Settings.from_env()

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
worker_class = "gthread"
threads = 4  # /ping plus requests queued behind the model lock
timeout = _settings.timeout_s + 10  # worker heartbeat; invocations themselves end by 60 s
graceful_timeout = GRACEFUL_TIMEOUT_S
keepalive = 75  # longer than the SageMaker front end's idle timeout (60 s): no reset sockets
accesslog = None  # serve.app writes one structured line per request
errorlog = "-"
loglevel = os.environ.get("SERVE_LOG_LEVEL", "info")


def post_fork(server, worker):
    """Pin each worker to one GPU (round-robin by worker age) before it imports torch."""
    if _settings.gpus:
        os.environ["SERVE_GPU_INDEX"] = str(worker.age % _settings.gpus)


def post_worker_init(worker):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                                                   "%(message)s")
    logging.getLogger("serve").setLevel(logging.INFO)
