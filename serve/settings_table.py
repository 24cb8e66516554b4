"""The serving settings' table: one row per environment variable serve reads, with the
``Settings`` field it fills, its parser, its default (a value, or a function of the host and of
the other variables) and what it accepts and does, in words.

``Settings.from_env`` (serve/config.py) is this table walked; docs/serving.md's serving table is it
printed (``python -m serve.config --markdown``; a test compares them); deploy.py's ``--env``
check reads its names (deployment/models.py). So it imports nothing heavy: no torch, no Flask.

Sources: AWS docs "Use your own inference code with hosting services" (port 8080, /ping within
2 s, /invocations within 60 s, SIGTERM then SIGKILL 30 s later) and "Use your own inference code
with batch transform" (SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_BATCH_STRATEGY,
SAGEMAKER_MAX_CONCURRENT_TRANSFORMS); the model server variables are the convention of AWS's own
containers.

The variables serve reads that are not settings are in ``NOT_SETTINGS``, with why.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from contract import precisions
from contract.artifact import MAX_BATCH
from serve.batch_transform import suggested_concurrency
from serve.precision import DEFAULT_TOLERANCE_POINTS

MB = 1024 * 1024
# Variables serve reads that are no setting of its own, so no row (and no --env of deploy.py).
NOT_SETTINGS = {
    "CUDA_VISIBLE_DEVICES": "CUDA's: the GPUs the container may use (config.gpu_count)",
    "XDG_CACHE_HOME": "the user's cache folder, where SERVE_COMPILE_CACHE_DIR's default is",
    "HOME": "the user's home, where SERVE_COMPILE_CACHE_DIR's default is without XDG_CACHE_HOME",
    "SERVE_MASTER_PID": "the gunicorn master's pid, set by it for its compile helpers",
    "SAGEMAKER_INSTANCE_TYPE": "recorded by deploy.py compile's job (serve/precompile.py)",
    "PYTHONPATH": "Python's: the compile helpers get it with the project's root first",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client's: set by the gunicorn master to a fresh "
                                "folder of its own where the workers share /metrics",
}
PORT = 8080
MODEL_DIR = "/opt/ml/model"
DEFAULT_MAX_PAYLOAD_MB = 6  # real-time endpoints accept bodies under 6 MB
DEFAULT_TIMEOUT_S = 60  # an invocation must finish within 60 s
# Batch transform (SAGEMAKER_BATCH=true): InvocationsTimeoutInSeconds' default; transform jobs
# and asynchronous endpoints allow up to an hour and 1 GB (asynchronous inference's payload).
DEFAULT_BATCH_TIMEOUT_S = 600
MAX_TIMEOUT_S = 3600
ASYNC_MAX_PAYLOAD_MB = 1024
# Request bodies one worker holds at once, counted before each is read (JSON bodies three times:
# the body, its parsed strings and their decoded images; JSON Lines twice), so large payloads
# wait their turn instead of adding up. At least one largest body always fits.
DEFAULT_BODY_MEMORY_MB = 1024
BODY_COPIES = {"json": 3, "jsonlines": 2, "image": 1}
# A body must arrive at 10 MB/s at least (and within DEFAULT_BODY_TIMEOUT_S for small ones).
BODY_MB_PER_S = 10
# A request's body must arrive within this many seconds (and the invocation's deadline): a
# client sending a byte a second holds a place and a thread no longer than that.
DEFAULT_BODY_TIMEOUT_S = 20
DEFAULT_MAX_LINES = 10_000  # lines of one JSON Lines request
DEFAULT_MAX_PIXELS = 50_000_000  # 4x a 12 MP phone photo; larger is a decompression bomb here
# The model's input before its centre crop is at most this big (6 MB as RGB): a 30:1 panorama at
# resize 256. A 1x50,000 strip would be 256x12,800,000 (9.8 GB).
DEFAULT_MAX_RESIZED_PIXELS = 2_000_000
DEFAULT_DECODE_MEMORY_MB = 512  # decoded frames held at once by one worker's request threads
DEFAULT_MAX_IMAGES_PER_REQUEST = 64
# Requests one worker holds at once (decoding, queued or running). A GPU worker must hold a whole
# instance's worth of SageMaker's usual 64 concurrent invocations (gunicorn does not spread
# connections evenly over workers) while its device has room; a CPU worker's queue beyond 32
# would only wait past its deadline.
DEFAULT_MAX_QUEUE = {"cpu": 32, "gpu": 128}
# Batching defaults per host kind (benchmarks/README.md, "Serving"): on the CPU a batch larger
# than 8 gained little per image and made each request wait longer; a GPU wants larger batches
# (not yet measured on one: 32 is TorchServe's and Triton's usual starting point for ResNet50).
DEFAULT_MAX_BATCH = {"cpu": 8, "gpu": 32}
DEFAULT_MAX_BATCH_DELAY_MS = {"cpu": 10, "gpu": 5}
METRICS_NAMESPACE = "SageMakerDogBreeds"  # CloudWatch namespace of serve's EMF metrics
CPU_THREADS_PER_WORKER = 4  # ResNet50 on CPU scales poorly past ~4 intra-op threads
# Cores per compile helper on a CPU host: a compile is mostly one thread of Python and the C++
# compiler, and helpers yield to serving (nice), so one per core; a GPU host's helpers share
# its one device, so one there.
CPU_CORES_PER_COMPILE = 1


def default_compile_cache_dir(env: Mapping[str, str]) -> str:
    """SERVE_COMPILE_CACHE_DIR's default: a folder in the user's own cache (XDG_CACHE_HOME,
    else ~/.cache), never a fixed path under /tmp that another user could make first: shared by
    a container's workers, kept across a worker's death, and writable (/opt/ml/model may be
    read-only on SageMaker)."""
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                      ".cache")
    return os.path.join(cache, "sagemaker-dog-breeds", "compiled")


def compile_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """SERVE_COMPILE_CACHE_DIR: where a host's workers keep the compiled programs
    (serve/compiled.py); ``default_compile_cache_dir`` when unset."""
    env = os.environ if environ is None else environ
    return BY_VARIABLE["SERVE_COMPILE_CACHE_DIR"].read(Reading(env, gpus=0, cpus=1))


def default_compile_processes(gpus: int, cpus: int) -> int:
    """Compile helpers at once: one per CPU_CORES_PER_COMPILE cores (at least 1), one on a
    GPU host."""
    return 1 if gpus else max(1, cpus // CPU_CORES_PER_COMPILE)


def default_workers(gpus: int, cpus: int) -> int:
    """One worker per GPU (each pinned to its own). On CPU, one worker per
    CPU_THREADS_PER_WORKER cores (at least 1): a single forward pass already uses every intra-op
    thread it is given, so more workers than that add contention, not throughput."""
    if gpus:
        return gpus
    return max(1, cpus // CPU_THREADS_PER_WORKER)


class Reading:
    """One environment being read on one host: each variable's value (in the variable's own
    unit) once its row has parsed it, so a default may depend on other variables in any order.

    Raises (on lookup):
        ValueError: the variable's value is refused by its row's parser.
    """

    def __init__(self, env: Mapping[str, str], gpus: int, cpus: int):
        self.env, self.gpus, self.cpus = env, gpus, cpus
        self.kind = "gpu" if gpus else "cpu"
        self._values: dict[str, Any] = {}

    def __getitem__(self, variable: str) -> Any:
        if variable not in self._values:
            self._values[variable] = BY_VARIABLE[variable].read(self)
        return self._values[variable]


def _number(value: int) -> str:
    """An integer as docs/serving.md writes it: thousands separated from 10,000 on."""
    return f"{value:,}" if value >= 10_000 else str(value)


# The parsers: each takes the variable's name and its value (set and not empty) and returns the
# value in the variable's unit, or raises ValueError with a message naming both.

def _converted(convert: Callable[[str], Any], what: str, name: str, raw: str) -> Any:
    try:
        return convert(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {what}") from None


@dataclass(frozen=True)
class Integer:
    """An integer from ``minimum`` to ``maximum`` (``why``: where that maximum comes from)."""

    minimum: int = 1
    maximum: int | None = None
    why: str = ""

    def __call__(self, name: str, raw: str) -> int:
        value = _converted(int, "an integer", name, raw)
        if value < self.minimum:
            raise ValueError(f"{name}={raw!r} must be at least {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{name}={raw!r} must be at most {self.maximum}{self._because}")
        return value

    @property
    def _because(self) -> str:
        return f" ({self.why})" if self.why else ""

    @property
    def accepted(self) -> str:
        if self.maximum is None:
            return f"an integer >= {self.minimum}"
        return f"an integer from {self.minimum} to {_number(self.maximum)}{self._because}"


@dataclass(frozen=True)
class Choice:
    """One of ``values``, in any case and with spaces around it."""

    values: tuple[str, ...]

    def __call__(self, name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.values:
            raise ValueError(f"{name}={raw!r}: expected one of {', '.join(self.values)}")
        return value

    @property
    def accepted(self) -> str:
        return ", ".join(f"`{v}`" for v in self.values[:-1]) + f" or `{self.values[-1]}`"


@dataclass(frozen=True)
class Points:
    """A number of accuracy points, from 0 to 100."""

    accepted: str = "a number from 0 to 100"

    def __call__(self, name: str, raw: str) -> float:
        value = _converted(float, "a number", name, raw)
        if not 0 <= value <= 100:
            raise ValueError(f"{name}={raw!r} must be from 0 to 100 (accuracy points)")
        return value


@dataclass(frozen=True)
class Text:
    """Any text, unchecked here (``accepted`` says what its reader makes of it)."""

    accepted: str

    def __call__(self, name: str, raw: str) -> str:
        return raw


@dataclass(frozen=True)
class IsTrue:
    """``true`` (any case, spaces around) is true, anything else false: SageMaker sets
    SAGEMAKER_BATCH=true in a transform job's container and nothing elsewhere."""

    accepted: str = "`true`; anything else is false"

    def __call__(self, name: str, raw: str) -> bool:
        return raw.strip().lower() == "true"


def _same(value: Any) -> Any:
    return value


def _megabytes(value: int) -> int:
    return value * MB


def _is_on(value: str) -> bool:
    return value == "on"


@dataclass(frozen=True)
class Setting:
    """One variable: the ``Settings`` field it fills (through ``store``, from the variable's
    unit to the field's), its parser, its default (a value, or a function of the ``Reading``,
    then ``default_words`` says it for docs/serving.md) and what it does."""

    variable: str
    field: str
    parse: Callable[[str, str], Any]
    default: Any
    help: str
    default_words: str = ""
    store: Callable[[Any], Any] = _same

    def read(self, reading: Reading) -> Any:
        """The variable's value in its own unit: the default when unset or empty.

        Raises:
            ValueError: the parser refuses the value (the message names the variable).
        """
        raw = reading.env.get(self.variable)
        if raw in (None, ""):
            return self.default(reading) if callable(self.default) else self.default
        return self.parse(self.variable, raw)

    @property
    def accepted(self) -> str:
        """What the variable accepts, in words."""
        return self.parse.accepted

    @property
    def default_cell(self) -> str:
        """The default as docs/serving.md says it."""
        if self.default_words:
            return self.default_words
        if isinstance(self.default, str):
            return f"`{self.default}`"
        return _number(self.default) if isinstance(self.default, int) else str(self.default)


def _per_kind(values: dict[str, int]) -> Callable[[Reading], int]:
    return lambda r: values[r.kind]


def _per_kind_words(values: dict[str, int]) -> str:
    return f"{values['cpu']} on CPU, {values['gpu']} on GPU"


def _timeout(r: Reading) -> int:
    return DEFAULT_BATCH_TIMEOUT_S if r["SAGEMAKER_BATCH"] else DEFAULT_TIMEOUT_S


def _max_queue(r: Reading) -> int:
    # In batch transform one worker may be sent every concurrent request: never refuse them.
    if r["SAGEMAKER_BATCH"]:
        return max(DEFAULT_MAX_QUEUE[r.kind], r["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"])
    return DEFAULT_MAX_QUEUE[r.kind]


def _concurrency(r: Reading) -> int:
    return suggested_concurrency(r["SAGEMAKER_MODEL_SERVER_WORKERS"],
                                 r["SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE"],
                                 r["SAGEMAKER_MAX_PAYLOAD_IN_MB"])


def _body_timeout(r: Reading) -> int:
    return max(DEFAULT_BODY_TIMEOUT_S, math.ceil(r["SAGEMAKER_MAX_PAYLOAD_IN_MB"] / BODY_MB_PER_S))


def _body_memory(r: Reading) -> int:
    return max(DEFAULT_BODY_MEMORY_MB, BODY_COPIES["json"] * r["SAGEMAKER_MAX_PAYLOAD_IN_MB"])


# docs/serving.md's order: SageMaker's variables, then serve's own by subject.
ROWS: tuple[Setting, ...] = (
    Setting("SAGEMAKER_MODEL_SERVER_WORKERS", "workers", Integer(),
            lambda r: default_workers(r.gpus, r.cpus),
            "gunicorn workers (each loads a model copy)",
            default_words=f"one per GPU; on CPU one per {CPU_THREADS_PER_WORKER} vCPUs"),
    Setting("SAGEMAKER_MODEL_SERVER_TIMEOUT", "timeout_s",
            Integer(maximum=MAX_TIMEOUT_S,
                    why="an hour: transform jobs' and asynchronous endpoints' limit"),
            _timeout, "seconds per invocation: its deadline, enforced (a 503, never a hang)",
            default_words=f"{DEFAULT_TIMEOUT_S} ({DEFAULT_BATCH_TIMEOUT_S} in batch transform)"),
    Setting("SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE", "max_batch_size",
            Integer(maximum=MAX_BATCH,
                    why="the largest batch a model program takes, contract/artifact.py"),
            _per_kind(DEFAULT_MAX_BATCH),
            "images per forward pass (over the exported programs' largest batch, `serve` exits "
            "2 at start)", default_words=_per_kind_words(DEFAULT_MAX_BATCH)),
    Setting("SAGEMAKER_MODEL_SERVER_MAX_BATCH_DELAY_MS", "max_batch_delay_ms", Integer(minimum=0),
            _per_kind(DEFAULT_MAX_BATCH_DELAY_MS),
            "milliseconds a batch may wait for requests still decoding",
            default_words=_per_kind_words(DEFAULT_MAX_BATCH_DELAY_MS)),
    Setting("SAGEMAKER_MODEL_SERVER_MAX_QUEUE", "max_queue", Integer(), _max_queue,
            "invocations one worker holds at once (reading their body, waiting for the model, "
            "decoding, queued, running); more get a 503 at once",
            default_words=f"{_per_kind_words(DEFAULT_MAX_QUEUE)} (in batch transform at least "
                          "`SAGEMAKER_MAX_CONCURRENT_TRANSFORMS`)"),
    Setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", "max_payload_bytes",
            Integer(maximum=ASYNC_MAX_PAYLOAD_MB, why="asynchronous inference's 1 GB"),
            DEFAULT_MAX_PAYLOAD_MB, "request body cap in MB (413)", store=_megabytes),
    Setting("SAGEMAKER_BATCH", "batch", IsTrue(), False,
            "batch mode (above); set by a transform job", default_words="unset"),
    Setting("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "max_concurrent_transforms", Integer(),
            _concurrency, "the transform job's concurrency (set by the job), reported by "
                          "`/execution-parameters`",
            default_words="two max batches per worker, within MaxConcurrentTransforms x "
                          "MaxPayloadInMB <= 100"),
    Setting("SAGEMAKER_BATCH_STRATEGY", "batch_strategy",
            Text("`SINGLE_RECORD` or `MULTI_RECORD` (not checked)"), "SINGLE_RECORD",
            "the transform job's strategy (set by the job), reported by `/execution-parameters`"),
    Setting("SAGEMAKER_BIND_TO_PORT", "port", Integer(), PORT,
            "the port serve listens on (SageMaker's contract is 8080; local runs and tests "
            "choose another)"),
    Setting("SERVE_BODY_TIMEOUT_S", "body_timeout_s", Integer(), _body_timeout,
            "seconds a request's body may take to arrive (408)",
            default_words=f"{DEFAULT_BODY_TIMEOUT_S}, or 1 s per {BODY_MB_PER_S} MB of the "
                          "payload cap"),
    Setting("SERVE_BODY_MEMORY_MB", "body_memory_bytes", Integer(), _body_memory,
            "MB that one worker's request bodies and their parsed copies hold at once, counted "
            "before each is read (JSON 3 times, JSON Lines twice); a body waits its turn, one "
            "that cannot fit is a 413",
            default_words=f"{DEFAULT_BODY_MEMORY_MB}, or {BODY_COPIES['json']} x the payload cap",
            store=_megabytes),
    Setting("SERVE_MAX_IMAGES_PER_REQUEST", "max_images_per_request", Integer(),
            DEFAULT_MAX_IMAGES_PER_REQUEST,
            "images in one JSON request (400); the chunk a JSON Lines request is served in"),
    Setting("SERVE_MAX_LINES_PER_REQUEST", "max_lines_per_request", Integer(), DEFAULT_MAX_LINES,
            "lines of one JSON Lines request (400)"),
    Setting("SERVE_MAX_IMAGE_PIXELS", "max_pixels", Integer(), DEFAULT_MAX_PIXELS,
            "pixels of one image, read from its header before decoding (400)"),
    Setting("SERVE_MAX_RESIZED_PIXELS", "max_resized_pixels", Integer(),
            DEFAULT_MAX_RESIZED_PIXELS,
            "pixels of one image once resized for the model (its shorter side to 256 for "
            "resnet50): a 30:1 panorama at most (400)"),
    Setting("SERVE_DECODE_MEMORY_MB", "decode_memory_bytes", Integer(), DEFAULT_DECODE_MEMORY_MB,
            "MB that one worker's decodes hold at once, counted for each image's format, mode, "
            "size and path before it decodes; decodes wait their turn", store=_megabytes),
    Setting("SERVE_PRECISION", "precision", Choice(("auto",) + precisions.NAMES), "auto",
            "force the precision the model runs in (`int8`: CPU, with the artifact's int8 "
            "program)"),
    Setting("SERVE_COMPILE", "compile", Choice(("auto", "on", "off")), "auto",
            "compile the program (AOTInductor) once per host for the batch sizes the scheduler "
            "forms"),
    Setting("SERVE_CPU_TURNS", "cpu_turns", Choice(("on", "off")), "on",
            "on a CPU host, decodes and the forward take turns on the worker's cores (the "
            "forward waits up to the max batch delay for running decodes) instead of sharing "
            "them; `off` lets them overlap", store=_is_on),
    Setting("SERVE_COMPILE_CACHE_DIR", "compile_cache_dir", Text("a folder's path"),
            lambda r: default_compile_cache_dir(r.env),
            "where a host's workers keep the compiled programs (each worker and each restarted "
            "one loads them); made with mode 0700, and refused (served uncompiled, one warning) "
            "when another user owns it or can write it",
            default_words="`~/.cache/sagemaker-dog-breeds/compiled` (`$XDG_CACHE_HOME` for "
                          "`~/.cache` when set)"),
    Setting("SERVE_COMPILE_PROCESSES", "compile_processes", Integer(),
            lambda r: default_compile_processes(r.gpus, r.cpus),
            "compile helpers at once on a host whose store lacks the programs (each holds about "
            "1 GB while it compiles ResNet50)",
            default_words="1 per CPU, 1 on GPU (at most one per batch size)"),
    Setting("SERVE_COMPILE_RETRY_S", "compile_retry_s", Integer(), 60,
            "seconds before a failed compile is tried again, doubling after each failure (an "
            "hour at most)"),
    Setting("SERVE_PRECISION_TOLERANCE", "precision_tolerance_points", Points(),
            DEFAULT_TOLERANCE_POINTS,
            "top-1 accuracy points a reduced precision may lose against fp32"),
    Setting("SERVE_METRICS", "metrics", Choice(("on", "off")), "on",
            "CloudWatch EMF metrics on stdout, per worker per interval (see \"Monitoring the "
            "endpoint\")", store=_is_on),
    Setting("SERVE_METRICS_INTERVAL_S", "metrics_interval_s", Integer(), 60,
            "seconds between a worker's metrics"),
    Setting("SERVE_METRICS_NAMESPACE", "metrics_namespace", Text("a CloudWatch namespace"),
            METRICS_NAMESPACE, "the metrics' CloudWatch namespace"),
    Setting("SERVE_ENDPOINT_NAME", "endpoint_name", Text("a name"), "local",
            "the metrics' EndpointName dimension (`deploy.py deploy` sets it)"),
    Setting("SERVE_VARIANT_NAME", "variant_name", Text("a name"), "AllTraffic",
            "the metrics' VariantName dimension (`deploy.py deploy` sets it)"),
    Setting("SERVE_PROMETHEUS", "prometheus", Choice(("on", "off")), "on",
            "`GET /metrics`: Prometheus text summed over the workers, which SageMaker scrapes "
            "with detailed observability (see \"Monitoring the endpoint\"); `off` answers 404",
            store=_is_on),
    Setting("SERVE_DRIFT_WINDOW", "drift_window", Integer(minimum=10), 1000,
            "images a worker's drift scores look back on"),
    Setting("SERVE_LOG_LEVEL", "log_level",
            Text("gunicorn's: `debug`, `info`, `warning`, `error` or `critical` (another is "
                 "`info`)"), "info", "gunicorn's log level (its error log, on stderr)"),
    Setting("SM_MODEL_DIR", "model_dir", Text("a folder's path"), MODEL_DIR,
            "where the artifact is (local runs)"),
)
BY_VARIABLE = {row.variable: row for row in ROWS}


def markdown_table() -> str:
    """docs/serving.md's serving table: variable, default, accepted values, what it does."""
    rows = ["| variable | default | accepted | meaning |", "|---|---|---|---|"]
    rows += [f"| `{row.variable}` | {row.default_cell} | {row.accepted} | {row.help} |"
             for row in ROWS]
    return "\n".join(rows)
