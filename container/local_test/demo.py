#!/usr/bin/env python3
"""The README's main job (`make demo`): train, serve and classify on this machine, no AWS.

1. Data: dogImages at data/dogImages if there, else downloaded (about 1.1 GB, checked); a few
   photos per breed. With no network it falls back to scikit-learn's handwritten digits, which
   ship inside the package, and says so: the dog photos are then classified as digits.
2. `container/train` on the host, through the same toolkit entry a SageMaker job uses, with an
   /opt/ml tree under out/demo/opt/ml (a frozen pretrained ResNet50 backbone for the dogs).
3. `container/serve` on a free loopback port with that model, then the sample dog photos are
   POSTed as image/jpeg and the top-3 breeds printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools import datasets  # noqa: E402
from tools.opt_ml import write_job  # noqa: E402

OUT = ROOT / "out" / "demo"
PHOTOS = sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))
PER_CLASS = int(os.environ.get("DEMO_IMAGES_PER_CLASS", "4"))

DOGS = {"arch": "resnet50", "epochs": 3, "freeze-epochs": 3, "batch-size": 32, "lr": 0.05,
        "image-size": 224, "pretrained": True, "max-images-per-class": PER_CLASS}
DIGITS = datasets.DIGITS_RECIPE


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def online(url: str, timeout: float = 10) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True
    except (OSError, ValueError):
        return False


def pretrained_reachable() -> bool:
    """ImageNet weights are in torchvision's cache, or download.pytorch.org answers."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights("resnet50").DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return cached.exists() or online(url)


def choose_data() -> tuple[Path, dict, str]:
    local = ROOT / "data" / "dogImages"
    try:
        if local.is_dir() or online(datasets.DOG_IMAGES_URL):
            if not pretrained_reachable():
                raise datasets.DatasetError("no ImageNet weights: not cached and "
                                            "download.pytorch.org cannot be reached")
            root = datasets.fetch_dog_images(ROOT / "data")
            subset = datasets.subset(root, OUT / "data" / "dogs", per_class=PER_CLASS)
            return subset, DOGS, f"dogImages, {PER_CLASS} photos per breed"
        reason = f"cannot reach {datasets.DOG_IMAGES_URL}"
    except datasets.DatasetError as exc:
        reason = str(exc)
    print("!" * 78)
    print(f"!! FALLBACK: {reason}.")
    print("!! Training on scikit-learn's handwritten digits (shipped in the package) instead,")
    print("!! from scratch. The whole pipeline is the same, but the dog photos below will be")
    print("!! classified as DIGITS: the labels are meaningless for dogs. Put dogImages in")
    print("!! data/dogImages (see README) for real breeds.")
    print("!" * 78, flush=True)
    return datasets.write_digits(OUT / "data" / "digits"), DIGITS, "digits fallback"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("serve did not become ready")


def classify(url: str) -> None:
    print(f"\n{'photo':<36} {'top-3 (probability)'}")
    for photo in PHOTOS:
        request = urllib.request.Request(
            url + "/invocations", data=photo.read_bytes(),
            headers={"Content-Type": "image/jpeg",
                     "X-Amzn-SageMaker-Custom-Attributes": "k=3"})
        with urllib.request.urlopen(request, timeout=60) as r:
            top = json.load(r)["predictions"][0]["top_k"]
        answer = ", ".join(f"{t['label']} ({t['probability']:.2f})" for t in top)
        print(f"{photo.name:<36} {answer}", flush=True)


def main() -> int:
    start = time.monotonic()
    banner("data")
    data, hyperparameters, what = choose_data()
    print(f"using {what}: {data}")
    counts = datasets.count_images(data)
    print("  " + ", ".join(f"{split}: {n} images in {c} classes"
                           for split, (c, n) in counts.items()))

    banner(f"train ({hyperparameters['arch']}, {hyperparameters['epochs']} epochs) "
           "through container/train")
    base = OUT / "opt" / "ml"
    if base.exists():
        import shutil

        shutil.rmtree(base)
    channels = {c: data / c for c in ("train", "valid", "test") if (data / c).is_dir()}
    write_job(base, channels, hyperparameters)
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(ROOT / "container" / "train")], env=env)
    if result.returncode != 0:
        failure = base / "output" / "failure"
        print(f"training failed: {failure.read_text() if failure.exists() else result.returncode}")
        return 1

    banner("serve through container/serve, and classify the sample dog photos")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, SM_MODEL_DIR=str(base / "model"), SAGEMAKER_BIND_TO_PORT=str(port),
               SAGEMAKER_MODEL_SERVER_WORKERS="1")
    log = open(OUT / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, str(ROOT / "container" / "serve")], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        classify(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    manifest = json.loads((base / "model" / "manifest.json").read_text())
    banner("done")
    print(f"model ({manifest['model_version']}): {base / 'model'}")
    print(f"reports (metrics.json, learning curves, confusion matrix): {base / 'output' / 'data'}")
    print(f"server log: {OUT / 'serve.log'}")
    print(f"wall time: {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
