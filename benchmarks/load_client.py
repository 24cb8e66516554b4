"""A load generator for the real server: ``concurrency`` keep-alive connections spread over
``processes`` client processes, each sending image/jpeg invocations back to back for a fixed
time. Standard library only, so a spawned client process starts in milliseconds and holds no
torch: at GPU rates one Python process cannot make enough requests, and its GIL would be the
bottleneck measured instead of the server's.
"""

from __future__ import annotations

import http.client
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Load:
    """What the clients saw: answers by HTTP status, latencies of the 200s (ms), and the
    measured seconds."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def per_second(self) -> float:
        """200 answers per second over the measured time."""
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the 200s' latencies, ms (0 with none)."""
        values = sorted(self.latencies_ms)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _connection_loop(url: str, bodies: list[bytes], offset: int, start: float, stop: float,
                     out: list) -> None:
    parts = urlsplit(url)
    conn = None
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    i = offset
    while time.monotonic() < stop:
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        sent = time.monotonic()
        try:
            conn.request("POST", "/invocations", body=bodies[i % len(bodies)],
                         headers={"Content-Type": "image/jpeg"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            conn.close()
            conn = None
            continue
        i += 1
        if sent >= start:  # the warm-up's answers are not counted
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append((time.monotonic() - sent) * 1000.0)
    if conn is not None:
        conn.close()
    out.append((statuses, latencies, errors))


def _process(url: str, bodies: list[bytes], connections: int, first: int, warmup_s: float,
             seconds: float, queue) -> None:
    begin = time.monotonic()
    start, stop = begin + warmup_s, begin + warmup_s + seconds
    out: list = []
    threads = [threading.Thread(target=_connection_loop,
                                args=(url, bodies, first + i, start, stop, out))
               for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(out)


def run(url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup_s: float = 2.0,
        processes: int = 4) -> Load:
    """Send ``bodies`` (JPEG files, in turn) to ``url``'s /invocations from ``concurrency``
    connections for ``warmup_s`` + ``seconds`` seconds; count what came back in the last
    ``seconds``."""
    processes = max(1, min(processes, concurrency))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    procs = [ctx.Process(target=_process,
                         args=(url, bodies, share, sum(shares[:i]), warmup_s, seconds, queue))
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    load = Load(seconds=seconds)
    for _ in procs:
        for statuses, latencies, errors in queue.get(timeout=seconds + warmup_s + 300):
            for status, count in statuses.items():
                load.statuses[status] = load.statuses.get(status, 0) + count
            load.latencies_ms.extend(latencies)
            load.errors.extend(errors)
    for p in procs:
        p.join(30)
    return load


def main() -> int:
    """``python benchmarks/load_client.py URL PHOTO... --concurrency 64 --seconds 15``: run the
    load and print one JSON line (requests/s, p50/p99 ms, statuses, the first errors)."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    bodies = [Path(p).read_bytes() for p in args.photos]
    load = run(args.url, bodies, args.concurrency, args.seconds, args.warmup, args.processes)
    print(json.dumps({"per_second": round(load.per_second(), 1),
                      "p50_ms": round(load.percentile(50), 2),
                      "p99_ms": round(load.percentile(99), 2),
                      "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
                      "errors": load.errors[:5]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
