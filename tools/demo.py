#!/usr/bin/env python3
"""The main job (`make demo`): train, serve and classify on this machine, no AWS.

1. Data: dogImages (tools/dogimages.py: from DOG_IMAGES_URL, the Udacity URL by default;
   reused when data/dogImages is there) and ImageNet weights for resnet50 (PRETRAINED_WEIGHTS, a
   file, URL or s3:// URI of a state_dict; else torchvision's cache or its download), then a few
   photos per breed (DEMO_IMAGES_PER_CLASS, 4). When the data set or the weights cannot be
   reached at all (no network), it falls back to scikit-learn's handwritten digits, which ship
   inside the package, and says so loudly: the dog photos are then classified as digits. A bad
   archive or a failed download ends the demo with one line saying what to do.
2. `container/train` on the host, through the same toolkit entry a SageMaker job uses, with an
   /opt/ml tree under out/demo/opt/ml (a frozen pretrained ResNet50 backbone for the dogs).
3. `container/serve` on a free loopback port with that model, then the sample dog photos are
   POSTed as image/jpeg and the top-3 breeds printed.

Each stage prints how long it took. DEMO_DATA_DIR and DEMO_OUT_DIR move data/ and out/demo/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import datasets, dogimages, folders  # noqa: E402
from tools.fetch import FetchError, Unreachable, fetch  # noqa: E402
from tools.opt_ml import write_job  # noqa: E402

DATA = Path(os.environ.get("DEMO_DATA_DIR") or ROOT / "data")
OUT = Path(os.environ.get("DEMO_OUT_DIR") or ROOT / "out" / "demo")
PHOTOS = sorted((ROOT / "tests" / "data" / "dogs").glob("*.jpg"))
PER_CLASS = int(os.environ.get("DEMO_IMAGES_PER_CLASS", "4"))
EPOCHS = int(os.environ.get("DEMO_EPOCHS", "3"))

DOGS = {"arch": "resnet50", "epochs": EPOCHS, "freeze-epochs": EPOCHS, "batch-size": 32, "lr": 0.05,
        "image-size": 224, "pretrained": True, "max-images-per-class": PER_CLASS}
DIGITS = datasets.DIGITS_RECIPE


class Stages:
    """Prints a banner per stage and, at the end, how long each took."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self._name, self._start = None, 0.0

    def begin(self, name: str, title: str) -> None:
        self.end()
        print(f"\n=== {title}", flush=True)
        self._name, self._start = name, time.monotonic()

    def end(self) -> None:
        if self._name:
            self.times.append((self._name, time.monotonic() - self._start))
            self._name = None

    def report(self) -> str:
        self.end()
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.times)


def fallback(reason: str) -> tuple[Path, dict, str, Path | None]:
    print("!" * 78)
    print(f"!! FALLBACK: {reason}.")
    print("!! Training on scikit-learn's handwritten digits (shipped in the package) instead,")
    print("!! from scratch. The whole pipeline is the same, but the dog photos below will be")
    print("!! classified as DIGITS: the labels are meaningless for dogs. Set DOG_IMAGES_URL and")
    print("!! PRETRAINED_WEIGHTS to copies you can reach (docs/training.md, 'The demo') for real breeds.")
    print("!" * 78, flush=True)
    return datasets.write_digits(OUT / "data" / "digits"), DIGITS, "digits fallback", None


def pretrained_weights() -> Path | None:
    """A folder holding the resnet50 state_dict from PRETRAINED_WEIGHTS (the job's pretrained
    channel), or None when torchvision's cache has the weights.

    Raises:
        Unreachable: no PRETRAINED_WEIGHTS and download.pytorch.org cannot be reached.
        FetchError: PRETRAINED_WEIGHTS cannot be fetched.
    """
    source = os.environ.get("PRETRAINED_WEIGHTS")
    if source:
        name = Path(source.split("?")[0]).name or "resnet50.pth"
        path = fetch(source, DATA / "weights" / name)
        channel = OUT / "weights"
        shutil.rmtree(channel, ignore_errors=True)
        channel.mkdir(parents=True)
        os.symlink(path.resolve(), channel / path.name)
        print(f"pretrained weights: {path}")
        return channel
    import torch
    import torchvision

    url = torchvision.models.get_model_weights("resnet50").DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.exists():
        print(f"pretrained weights: torchvision's cache, {cached}")
        return None
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10)
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"no ImageNet weights: not in torchvision's cache ({cached}) and "
                          f"{url} cannot be reached ({exc})") from exc
    return None  # the job downloads them into the cache


def choose_data() -> tuple[Path, dict, str, Path | None]:
    """(data folder, hyperparameters, what it is, pretrained channel or None).

    Raises:
        SystemExit: a failed download or a bad archive (one line).
    """
    try:
        root = dogimages.ensure(DATA)
        weights = pretrained_weights()
        # Refused, never deleting dogImages, when DEMO_OUT_DIR's copy would overlap it.
        subset = datasets.subset(root, OUT / "data" / "dogs", per_class=PER_CLASS)
    except (dogimages.DogImagesUnavailable, Unreachable) as exc:
        return fallback(str(exc))
    except (folders.DatasetError, FetchError) as exc:
        raise SystemExit(f"demo: {exc}") from None
    return subset, DOGS, f"dogImages, {PER_CLASS} per breed and split", weights


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
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
    stages = Stages()
    stages.begin("data", "data")
    data, hyperparameters, what, weights = choose_data()
    print(f"using {what}: {data}")
    counts = folders.count_images(data)
    print("  " + ", ".join(f"{split}: {n} images in {c} classes"
                           for split, (c, n) in counts.items()))

    stages.begin("train", f"train ({hyperparameters['arch']}, {hyperparameters['epochs']} "
                          f"epochs) through container/train")
    base = OUT / "opt" / "ml"
    if base.exists():
        shutil.rmtree(base)
    channels = {c: data / c for c in ("train", "valid", "test") if (data / c).is_dir()}
    if weights is not None:
        channels["pretrained"] = weights
    write_job(base, channels, hyperparameters)
    env = dict(os.environ, SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(ROOT / "container" / "train")], env=env)
    if result.returncode != 0:
        failure = base / "output" / "failure"
        print(f"training failed: {failure.read_text() if failure.exists() else result.returncode}")
        return 1

    stages.begin("serve", "serve through container/serve, and classify the sample dog photos")
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
    stages.begin("done", "done")
    print(f"model ({manifest['model_version']}): {base / 'model'}")
    print(f"reports (metrics.json, learning curves, confusion matrix, debugger report): "
          f"{base / 'output' / 'data'}")
    print(f"server log: {OUT / 'serve.log'}")
    print(f"stages: {stages.report()}")
    print(f"wall time: {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
