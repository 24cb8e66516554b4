"""A stand-in for SageMaker's batch transform agent, on local folders: what the service does
between S3 and the container, for the tests and the benchmarks.

What it does, from the SageMaker developer guide ("Use your own inference code with batch
transform", "Batch transform") and the API reference (CreateTransformJob, TransformInput,
TransformOutput):
- asks GET /execution-parameters for what the job leaves unset (MaxConcurrentTransforms,
  BatchStrategy, MaxPayloadInMB);
- SplitType None sends each file whole, one request each; SplitType Line sends its lines, one a
  request (SingleRecord) or as many whole lines as fit in MaxPayloadInMB (MultiRecord); a file
  or a line over MaxPayloadInMB fails its file;
- keeps up to MaxConcurrentTransforms requests in flight, with the job's ContentType and Accept;
- writes ``<relative path>.out`` for each file all of whose requests answered 200, the answers
  in order (AssembleWith Line ends each with a newline), and nothing for a file that failed.
It does not retry (InvocationsMaxRetries 0), so a 503 fails its file here.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

STRATEGIES = {"SINGLE_RECORD": "SingleRecord", "MULTI_RECORD": "MultiRecord",
              "SingleRecord": "SingleRecord", "MultiRecord": "MultiRecord"}


@dataclass
class Job:
    """A transform job's settings, in CreateTransformJob's terms (None: the container's)."""

    content_type: str
    split_type: str = "None"
    strategy: str | None = None
    max_concurrent: int | None = None
    max_payload_mb: int | None = None
    accept: str | None = None
    assemble_with: str = "None"


@dataclass
class Run:
    """What a run did: the parameters it used, the files it read and those that failed (with
    why), its requests by HTTP status and how long it took (s)."""

    parameters: dict
    files: int = 0
    failed: dict = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    in_flight_max: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


class _Client:
    """One keep-alive connection per thread, as the agent keeps its connections."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.local = threading.local()

    def post(self, body: bytes, headers: dict) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                    timeout=self.timeout)
            try:
                conn.request("POST", "/invocations", body, headers)
                response = conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self.local.conn = None
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("not reached")


def execution_parameters(url: str) -> dict:
    """The container's GET /execution-parameters (``{}`` when it answers none)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", "/execution-parameters")
        response = conn.getresponse()
        return json.loads(response.read()) if response.status == 200 else {}
    finally:
        conn.close()


def records(data: bytes, job: Job, payload_bytes: int) -> list[bytes]:
    """The request bodies of one file.

    Raises:
        ValueError: the file (SplitType None) or one line is over the payload.
    """
    if job.split_type == "None":
        if len(data) > payload_bytes:
            raise ValueError(f"the file's {len(data):,} bytes are over MaxPayloadInMB")
        return [data]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line
    lines = [line + b"\n" for line in lines]
    if any(len(line) > payload_bytes for line in lines):
        raise ValueError("a line is over MaxPayloadInMB")
    if job.strategy == "SingleRecord":
        return lines
    bodies, current = [], b""
    for line in lines:
        if current and len(current) + len(line) > payload_bytes:
            bodies.append(current)
            current = b""
        current += line
    return bodies + ([current] if current else [])


def run(url: str, job: Job, input_dir: Path, output_dir: Path, timeout: float = 600) -> Run:
    """Transform every file under ``input_dir`` through the container at ``url``, writing the
    ``.out`` files under ``output_dir`` with the same relative paths."""
    suggested = execution_parameters(url)
    job = Job(**{**job.__dict__,
                 "strategy": STRATEGIES[job.strategy or suggested.get("BatchStrategy")
                                        or "SingleRecord"],
                 "max_concurrent": job.max_concurrent or suggested.get(
                     "MaxConcurrentTransforms", 1),
                 "max_payload_mb": job.max_payload_mb or suggested.get("MaxPayloadInMB", 6)})
    result = Run(parameters={"MaxConcurrentTransforms": job.max_concurrent,
                             "BatchStrategy": job.strategy, "MaxPayloadInMB": job.max_payload_mb})
    files = sorted(p for p in Path(input_dir).rglob("*") if p.is_file())
    result.files = len(files)
    requests = []  # (file, index, body)
    bodies: dict[Path, list] = {}
    for path in files:
        try:
            parts = records(path.read_bytes(), job, job.max_payload_mb * 1024 * 1024)
        except ValueError as exc:
            result.failed[str(path.relative_to(input_dir))] = str(exc)
            continue
        bodies[path] = [None] * len(parts)
        requests += [(path, i, body) for i, body in enumerate(parts)]
    headers = {"Content-Type": job.content_type}
    if job.accept:
        headers["Accept"] = job.accept
    client, lock, in_flight = _Client(url, timeout), threading.Lock(), [0]

    def send(request):
        path, i, body = request
        with lock:
            in_flight[0] += 1
            result.in_flight_max = max(result.in_flight_max, in_flight[0])
        try:
            status, answer = client.post(body, headers)
        except OSError as exc:
            status, answer = type(exc).__name__, b""
        finally:
            with lock:
                in_flight[0] -= 1
        with lock:
            result.statuses[status] += 1
            bodies[path][i] = (status, answer)

    start = time.monotonic()
    with ThreadPoolExecutor(job.max_concurrent) as pool:
        list(pool.map(send, requests))
    result.seconds = time.monotonic() - start
    for path, answers in bodies.items():
        relative = path.relative_to(input_dir)
        bad = [(i, status, answer) for i, (status, answer) in enumerate(answers)
               if status != 200]
        if bad:
            i, status, answer = bad[0]
            result.failed[str(relative)] = f"request {i}: {status} {answer[:300]!r}"
            continue
        end = b"\n" if job.assemble_with == "Line" else b""
        out = output_dir / f"{relative}.out"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(answer + end for _, answer in answers))
    return result
