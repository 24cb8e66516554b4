#!/usr/bin/env python3
"""The server in batch mode against a stand-in for SageMaker's transform agent
(tests/serve/transform_agent.py), with what the server used to suggest as the baseline, in the
same run.

A ResNet50 artifact (random weights, 133 classes: the real model's shape) is served by
container/serve with a transform job's environment (SAGEMAKER_BATCH=true, MaxPayloadInMB 6, 1
worker, the host's precision and compilation). In each of ``--rounds`` rounds, in turn:
- SplitType None over the sample dog photos (``--copies`` of each, 16: 112 files): images/s at
  MaxConcurrentTransforms 1 (what /execution-parameters suggested before batch mode) and at
  the container's suggestion now (16), and their ratio;
- a JSON Lines file of 100 records (the photos in turn, 2 of them bad), SplitType Line,
  MultiRecord and SingleRecord: seconds; then the answers: lines, errors, and the top-1
  agreement of the good lines with each photo's answer alone;
- a 10 MB PNG: the status and ms on a real-time server (6 MB cap) and on a batch one with
  MaxPayloadInMB 20 (both eager: only the cap matters there).

    .venv/bin/python benchmarks/bench_transform.py [--copies 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import DOG_PHOTOS, start_server  # noqa: E402
from tests.serve import transform_agent  # noqa: E402
from tests.serve.test_transform import noise_png  # noqa: E402
from train import data, model  # noqa: E402
from train.export import artifact  # noqa: E402

def post(url: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    start = time.perf_counter()
    try:
        conn.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, response.read(), (time.perf_counter() - start) * 1000
    finally:
        conn.close()


def write_artifact(model_dir: Path) -> None:
    pre = data.Preprocess.for_size(224)
    net = model.build("resnet50", 133)
    artifact.write(model_dir, net, "resnet50", [f"{i + 1:03d}.Breed_{i}" for i in range(133)],
                   pre, "bench", {}, {})
    # Unmeasured precisions, equal to fp32, so that the choice follows the host alone.
    artifact.update(model_dir, {"precisions": {"evaluated_on": "none (benchmark)",
                                               "fp32": {"top1": 1.0}, "bf16": {"top1": 1.0},
                                               "fp16": {"top1": 1.0}}})


def split_none(url: str, photos: Path, out: Path, concurrency: int | None
               ) -> tuple[dict, float]:
    job = transform_agent.Job(content_type="image/jpeg", accept="application/json",
                              max_concurrent=concurrency)
    shutil.rmtree(out, ignore_errors=True)
    run = transform_agent.run(url, job, photos, out)
    assert not run.failed, run.failed
    return run.parameters, run.files / run.seconds


def jsonlines(url: str, work: Path, strategy: str, alone: list[int]) -> dict:
    bad = {9: b'{"b64": "not base64!!"}',
           49: json.dumps({"b64": base64.b64encode(b"no image").decode()}).encode()}
    lines = [bad.get(i, json.dumps({"b64": base64.b64encode(
        DOG_PHOTOS[i % len(DOG_PHOTOS)].read_bytes()).decode()}).encode()) for i in range(100)]
    shutil.rmtree(work / "out", ignore_errors=True)
    (work / "in").mkdir(parents=True, exist_ok=True)
    (work / "in" / "photos.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job = transform_agent.Job(content_type="application/jsonlines", split_type="Line",
                              strategy=strategy, max_payload_mb=6 if strategy == "MultiRecord"
                              else None, accept="application/jsonlines", assemble_with="Line")
    run = transform_agent.run(url, job, work / "in", work / "out")
    assert not run.failed, run.failed
    answers = [json.loads(line) for line in
               (work / "out" / "photos.jsonl.out").read_text().splitlines()]
    good = [(i, a) for i, a in enumerate(answers) if "top_k" in a]
    same = sum(a["top_k"][0]["index"] == alone[i % len(DOG_PHOTOS)] for i, a in good)
    return {"seconds": run.seconds, "requests": run.requests, "lines": len(answers),
            "errors": len(answers) - len(good), "error_lines": sorted(
                i + 1 for i, a in enumerate(answers) if "top_k" not in a),
            "agree": same, "good": len(good), **run.parameters}


def job_env(payload_mb: int, **more) -> dict:
    """What a transform job with this MaxPayloadInMB sets (and one worker, for the ratios)."""
    return {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(payload_mb),
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1", **more}


def served(model_dir: Path, log: Path, env: dict, work):
    """Start a server with ``env``, run ``work(url)``, stop it; returns what work returned and
    the server's chosen precision (its log line)."""
    server = start_server(model_dir, log, env=env, wait_ready=900)
    try:
        result = work(server.url)
    finally:
        server.stop()
    chosen = [line.split("precision ", 1)[1] for line in log.read_text().splitlines()
              if " precision " in line]
    return result, chosen[0] if chosen else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=16, help="copies of each sample photo")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    eager = {"SERVE_COMPILE": "off"}  # where only the body cap is measured: a faster start
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_artifact(tmp / "model")
        photos = tmp / "photos"
        photos.mkdir()
        for n in range(args.copies):
            for p in DOG_PHOTOS:
                shutil.copy(p, photos / f"{n:03d}-{p.name}")
        png = noise_png(10)
        (rt_status, _, rt_ms), _ = served(tmp / "model", tmp / "rt.log", {
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1", **eager},
            lambda url: post(url, png, "image/png"))
        (batch_status, _, batch_ms), _ = served(tmp / "model", tmp / "png.log",
                                                job_env(20, **eager),
                                                lambda url: post(url, png, "image/png"))

        def alone_top1(url: str) -> list[int]:
            return [json.loads(post(url, p.read_bytes(), "image/jpeg")[1])["predictions"][0]
                    ["top_k"][0]["index"] for p in DOG_PHOTOS]

        def measure(url: str) -> list[dict]:
            """Every mode in each round, in turn: a shared machine's slow spells hit all."""
            alone = alone_top1(url)
            split_none(url, photos, tmp / "warm", None)
            rounds = []
            for _ in range(args.rounds):
                one = split_none(url, photos, tmp / "out1", 1)
                suggested = split_none(url, photos, tmp / "out2", None)
                rounds.append({"one": one[1], "suggested": suggested[1],
                               "concurrency": suggested[0]["MaxConcurrentTransforms"],
                               **{s: jsonlines(url, tmp / s, s, alone)
                                  for s in ("MultiRecord", "SingleRecord")}})
            return rounds

        # The concurrency the container suggests is 16 both at deploy.py's payload for single
        # photos (1 MB) and at its JSON Lines payload (6 MB): one server serves every mode.
        rounds, chosen = served(tmp / "model", tmp / "batch.log", job_env(6), measure)
    photos_n = len(DOG_PHOTOS) * args.copies
    out = [f"resnet50, 133 classes, random weights, 1 worker: {chosen}",
           f"SplitType None: {photos_n} photos, one a request; JSON Lines: 100 records (2 bad), "
           "MaxPayloadInMB 6"]
    for i, r in enumerate(rounds):
        m, single = r["MultiRecord"], r["SingleRecord"]
        out.append(f"  round {i + 1}: None at MaxConcurrentTransforms 1 {r['one']:.1f} images/s, "
                   f"at the suggested {r['concurrency']} {r['suggested']:.1f} (ratio "
                   f"{r['suggested'] / r['one']:.2f}); JSON Lines MultiRecord {m['seconds']:.2f} "
                   f"s in {m['requests']} requests ({100 / m['seconds']:.1f} records/s), "
                   f"SingleRecord {single['seconds']:.2f} s ({100 / single['seconds']:.1f})")
    for strategy in ("MultiRecord", "SingleRecord"):
        r = rounds[-1][strategy]
        out.append(f"JSON Lines {strategy} answers: {r['lines']} lines, {r['errors']} errors "
                   f"(lines {r['error_lines']}), top-1 as each photo alone {r['agree']}/"
                   f"{r['good']}")
    out.append(f"10 MB PNG ({len(png):,} bytes): real-time {rt_status} in {rt_ms:.0f} ms; "
               f"batch mode (MaxPayloadInMB 20) {batch_status} in {batch_ms:.0f} ms")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
