"""gunicorn settings for `serve` (read with ``--config python:serve.gunicorn_conf``).

gthread workers: a thread per request the worker's queue admits (they decode and wait for the
model thread) and spares, so /ping (within SageMaker's 2 s) and fast rejections never wait for
a thread. The master imports the app's modules once its port is open (``when_ready``), so a
worker forked later, a replacement included, answers at once instead of importing torch for
seconds; each worker still builds the app and loads the model after the fork, because CUDA does
not survive a fork, and sees only its own GPU. SIGTERM: each worker (serve/worker.py) answers
the connections waiting to be accepted, closes its listener, finishes requests in flight for up
to ``graceful_timeout`` s, then exits; SageMaker sends SIGKILL 30 s after SIGTERM, so 25 s.

/metrics (serve/prometheus.py): the master makes a fresh, empty folder for the workers' metric
files before anything imports prometheus_client (``on_starting``), counts the workers it forks to
replace others, marks each exited worker dead so its live gauges stop counting (``child_exit``),
and removes the folder as it exits (prometheus_client docs, "Multiprocess Mode").
"""

import gc
import logging
import os
import shutil
import tempfile
from collections import Counter

from serve.config import GRACEFUL_TIMEOUT_S, Settings

_settings = Settings.from_env()
_master = None  # the master's serve.prometheus.MasterMetrics, with /metrics on

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
worker_class = "serve.worker.DrainingThreadWorker"  # gthread that drains its accept queue on stop
threads = _settings.threads
timeout = _settings.timeout_s + 10  # worker heartbeat; invocations end at their own deadline
graceful_timeout = GRACEFUL_TIMEOUT_S
keepalive = 75  # longer than the SageMaker front end's idle timeout (60 s): no reset sockets
accesslog = None  # serve.app writes one structured line per request
errorlog = "-"
loglevel = _settings.log_level


def assign_gpu(live_gpu_indexes: list[int], gpus: int) -> int:
    """The GPU for a new worker: the one the fewest live workers use (the lowest index on a
    tie), so a worker that replaces a dead one takes the GPU it left."""
    load = Counter(live_gpu_indexes)
    return min(range(gpus), key=lambda i: (load[i], i))


def on_starting(server):
    """In the master, before its workers: with /metrics on, the folder they share their metrics
    in, set before prometheus_client is imported (it picks its multiprocess mode on import)."""
    global _master
    if not _settings.prometheus:
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="serve-prometheus-")
    from serve.prometheus import MasterMetrics

    _master = MasterMetrics(_settings.workers)


def on_exit(server):
    """In the master, as it exits: remove the metrics' folder."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if _master is not None and path:
        shutil.rmtree(path, ignore_errors=True)


def child_exit(server, worker):
    """In the master, once a worker exited: its live gauges (queue depth, requests in flight,
    what it ran) stop counting; its counters and histograms stay in the totals."""
    if _master is not None:
        _master.exited(worker.pid)


def pre_fork(server, worker):
    """In the master, before the fork: count a worker that replaces another (/metrics), and
    choose the worker's GPU from the live workers' ones."""
    if _master is not None:
        _master.forking()
    if _settings.gpus:
        live = [w.gpu_index for w in server.WORKERS.values() if hasattr(w, "gpu_index")]
        worker.gpu_index = assign_gpu(live, _settings.gpus)


def when_ready(server):
    """In the master, once the port is open: import the app's modules (torch takes seconds)
    and, on a CPU host, what its precisions need (torchao for int8), then freeze them out of
    the garbage collector so the workers' copies stay shared (Python docs, gc.freeze).
    Importing torch initialises no CUDA, so forking stays safe."""
    import serve.app  # noqa: F401

    if not _settings.gpus:
        from serve.precision import prepare_cpu_precisions

        prepare_cpu_precisions()
    gc.freeze()


def post_fork(server, worker):
    """In the worker, before it loads the app: logging (the model's loader thread logs its
    precision choice as the app is built), the master's pid for the compile helpers
    (serve/compiling.py), and, before it touches CUDA, its GPU as the only one
    it sees (so no worker creates a context on another GPU by accident)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                                                   "%(message)s")
    logging.getLogger("serve").setLevel(logging.INFO)
    # Compile helpers outlive a worker that dies (its replacement needs them), not the master.
    os.environ["SERVE_MASTER_PID"] = str(server.pid)
    if _settings.gpus:
        visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _settings.gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[worker.gpu_index]


def visible_gpus(cuda_visible_devices: str | None, gpus: int) -> list[str]:
    """The GPU ids the workers are spread over: the container's own CUDA_VISIBLE_DEVICES list
    when it has one, else 0 to ``gpus`` - 1."""
    if cuda_visible_devices:
        return [d.strip() for d in cuda_visible_devices.split(",") if d.strip()][:gpus]
    return [str(i) for i in range(gpus)]


def worker_exit(server, worker):
    """In the worker, as it exits (SIGTERM, or a max-requests restart): write its pending
    metrics."""
    from serve.lifecycle import close_all

    close_all()

