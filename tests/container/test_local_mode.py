"""The SageMaker SDK's local mode (LocalSession, instance_type "local") drives the real image, with
nothing of the SDK patched: `deploy.py local` trains, deploys and classifies; a batch transform
over a folder of JPEGs; a job stopped with SIGTERM and a second fit that resumes it; a
two-instance job that trains with DDP across two containers.

The engine is podman's Docker-compatible service (`podman system service`), which the SDK's
docker-compose reaches through DOCKER_HOST. The `engine` fixture starts it and, at the end
(also after a failure), removes every container the SDK made under its folder, the
sagemaker-local network and the service.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, DOG_PHOTOS, ROOT, free_port
from tests.helpers.image import sh

pytestmark = pytest.mark.system

LOGS = ARTIFACTS / "local-mode"  # each test's log, kept for a look
REGION = "us-east-1"
ROLE = "arn:aws:iam::111111111111:role/local-mode"
NETWORK = "sagemaker-local"  # the SDK's compose network, fixed by name
# The digits recipe on 20 photos per class and channel (200 training photos), with no int8
# program and no rules report, which only the two-instance test turns back on.
HP = {"arch": "resnet18", "batch-size": 32, "lr": 0.02, "image-size": 32, "min-crop-scale": 0.6,
      "pretrained": False, "num-workers": 1, "max-images-per-class": 20,
      "int8-calibration-images": 0, "debugger-rules": False}
TRAIN_PHOTOS = 200
# A metric line as the SDK streams it: "NAME |" (with colour codes) before the container's line.
EPOCH_LINE = r"^.*\|\S*\s+epoch={n} "


def _keep_log(name: str, text: str) -> str:
    """Write ``text`` (the SDK's stream of the containers' output, colour codes removed) to
    LOGS/NAME.log before the test reads it, so that a failure leaves it; returns it."""
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{name}.log").write_text(re.sub(r"\x1b\[[0-9;]*m", "", text))
    return text


def _compose_containers(root: Path) -> list[str]:
    """Names of the containers of compose projects that ran under ``root`` (any state)."""
    out = sh("podman", "ps", "-a", "--format", "{{.Names}} {{.Labels}}").stdout
    return [line.split()[0] for line in out.splitlines() if f"{root}/" in line]


def _ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """podman's Docker API on a socket of its own, in DOCKER_HOST for the SDK's docker-compose;
    yields the folder every compose project of these tests goes under. Needs what `make
    system-deps` installs: a Docker CLI, docker-compose and CNI's dnsname plugin."""
    for command in ("podman", "docker", "docker-compose"):
        assert shutil.which(command), f"no {command} command: run `make system-deps` (root)"
    root = tmp_path_factory.mktemp("sagemaker-local")
    sock = root / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "AWS_EC2_METADATA_DISABLED")}
    try:
        deadline = time.monotonic() + 30
        while not _ping(sock):
            assert service.poll() is None and time.monotonic() < deadline, \
                "podman system service did not start"
            time.sleep(0.2)
        os.environ["DOCKER_HOST"] = f"unix://{sock}"
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # no credentials: do not wait for IMDS
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        names = _compose_containers(root)
        if names:
            sh("podman", "rm", "-f", *names, check=False)
        # Only when no other container uses it (podman refuses then).
        sh("podman", "network", "rm", NETWORK, check=False)
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


@pytest.fixture
def sdk_root(engine, request) -> Path:
    """This test's folder for the SDK's compose projects (local.container_root), under the
    engine's, so that the engine's teardown finds their containers."""
    root = engine / request.node.name
    root.mkdir()
    return root


def _session(root: Path, port: int | None = None):
    """deploy.py local's LocalSession (the SDK's own, telemetry off) on a free port."""
    import boto3

    from deployment import local_mode

    return local_mode.make_session(boto3.Session(region_name=REGION), port or free_port(),
                                   root)


def _estimator(session, image: str, output: Path, instance_count: int = 1, **hp):
    from sagemaker.estimator import Estimator

    return Estimator(image_uri=image, role=ROLE, instance_count=instance_count,
                     instance_type="local", hyperparameters={**HP, **hp},
                     output_path=f"file://{output}", sagemaker_session=session,
                     disable_profiler=True, debugger_hook_config=False)


def _channels(digits: Path) -> dict[str, str]:
    return {s: f"file://{digits / s}" for s in ("train", "valid", "test")}


def _tar_json(archive: Path, member: str):
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile(member))


def _tar_text(archive: Path, member: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(member).read().decode()


def _tar_names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


# ----------------------------------------------------------------------- deploy.py local
@pytest.fixture(scope="module")
def deploy_py_local(engine, image, digits_dir):
    """`deploy.py local` as a user runs it (its own LocalSession, no SDK config file): returns
    (the finished process, its job's output folder, the compose containers left after it)."""
    out = engine / "deploy-py"
    tmp = engine / "deploy-py-tmp"  # deploy.py's container root goes here (tempfile)
    tmp.mkdir()
    job = "local-mode-deploy"
    hp = [f"--hp={k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in {**HP, "epochs": 1}.items()]
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
    env.pop("SAGEMAKER_USER_CONFIG_OVERRIDE", None)
    run = subprocess.run(
        [sys.executable, str(ROOT / "deploy.py"), "local", "--region", REGION, "--image-tag",
         image, "--data-dir", str(digits_dir), "--output-dir", str(out), "--job-name", job,
         "--port", str(free_port()), *hp],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=env,
        cwd=ROOT)
    _keep_log("deploy-py-local", run.stdout)
    return run, out / job, _compose_containers(tmp)


def test_local_mode_deploy_py_trains_deploys_classifies_and_deletes(deploy_py_local):
    run, job_dir, left = deploy_py_local
    log = run.stdout
    assert run.returncode == 0, log[-6000:]
    assert "Reporting training SUCCESS" in log
    assert f"trained locally: file://{job_dir}/model.tar.gz" in log
    # What the SDK packed from /opt/ml/model and /opt/ml/output.
    model = job_dir / "model.tar.gz"
    assert {"manifest.json", "model.pt2"} <= set(_tar_names(model))
    manifest = _tar_json(model, "manifest.json")
    assert manifest["training"]["complete"] is True and manifest["arch"] == "resnet18"
    assert "data/metrics.json" in _tar_names(job_dir / "output.tar.gz")
    # Every sample photo classified through the SDK's Predictor as image/jpeg, top 3 each.
    table = [line for line in log.splitlines() if re.match(r"^\S+\.jpg\s+1\s", line)]
    assert [line.split()[0] for line in table] == [p.name for p in DOG_PHOTOS]
    for line in table:
        top1 = re.match(r"^\S+\.jpg\s+1\s+(.+?)\s+[01]\.\d{3}$", line)
        assert top1 and top1.group(1) in manifest["classes"], line
    invocations = [line for line in log.splitlines() if '"path": "/invocations"' in line]
    assert len(invocations) == len(DOG_PHOTOS)
    assert all('"status": 200' in i and '"content_type": "image/jpeg"' in i for i in invocations)
    assert "local endpoint stopped" in log
    # Telemetry off: no request to S3, no traceback in the user's output.
    assert "Traceback" not in log and "sm-pysdk-t" not in log
    assert left == [], f"deploy.py local left containers behind: {left}"


# ------------------------------------------------------------------------ batch transform
def test_local_mode_batch_transform_writes_one_prediction_per_jpeg(image, deploy_py_local,
                                                                   sdk_root, tmp_path, capfd):
    """The SDK's Transformer over a folder of JPEGs, one image per request: one .out per photo,
    each the JSON answer the endpoint gave for that photo."""
    from sagemaker.model import Model

    run, job_dir, _ = deploy_py_local
    assert run.returncode == 0, "deploy.py local failed: see the test above"
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in DOG_PHOTOS:
        shutil.copy(photo, photos / photo.name)
    root = sdk_root
    session = _session(root)
    # Compilation is the endpoint test's business; eager fp32 starts this container faster.
    model = Model(image_uri=image, model_data=f"file://{job_dir}/model.tar.gz", role=ROLE,
                  sagemaker_session=session, env={"SERVE_COMPILE": "off"})
    out = tmp_path / "transform"
    # strategy: the SDK's local mode reads /execution-parameters' BatchStrategy in the API's
    # spelling (SingleRecord); the container answers in the environment's (SINGLE_RECORD, as
    # AWS's containers do), which local mode refuses: name it here.
    transformer = model.transformer(instance_count=1, instance_type="local",
                                    strategy="SingleRecord", output_path=f"file://{out}",
                                    accept="application/json")
    # logs=False: the SDK's LocalSession has no local logs_for_transform_job, so wait(logs=True)
    # asks CloudWatch Logs (no credentials here); the job itself ran inside transform().
    transformer.transform(f"file://{photos}", content_type="image/jpeg", wait=True, logs=False)
    logs = _keep_log("transform", capfd.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.name}.out" for p in DOG_PHOTOS)
    manifest = _tar_json(job_dir / "model.tar.gz", "manifest.json")
    table = {line.split()[0]: line.split() for line in run.stdout.splitlines()
             if re.match(r"^\S+\.jpg\s+1\s", line)}
    for photo in DOG_PHOTOS:
        answer = json.loads((out / f"{photo.name}.out").read_text())
        assert answer["model_version"] == manifest["model_version"]
        [prediction] = answer["predictions"]
        best = prediction["top_k"][0]
        # The endpoint's top-1 for the same photo (deploy.py's table), same probability.
        assert best["label"] == " ".join(table[photo.name][2:-1]), (photo.name, best)
        assert abs(best["probability"] - float(table[photo.name][-1])) < 0.01
    requests = [line for line in logs.splitlines() if '"path": "/invocations"' in line]
    assert len(requests) == len(DOG_PHOTOS) and all('"images": 1' in r for r in requests)
    assert '"path": "/execution-parameters", "status": 200' in logs
    running = sh("podman", "ps", "--format", "{{.Names}}").stdout.split()
    assert _compose_containers(root) and not set(running) & set(_compose_containers(root))


# ---------------------------------------------------------------------- stop, then resume
def _wait_for_line(root: Path, pattern: str, timeout: float, running) -> str:
    """The name of the running training container under ``root`` once its log has a line
    matching ``pattern``; fails when ``running()`` turns false (the fit ended) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert running(), f"the fit ended before a container logged {pattern!r}"
        for name in _compose_containers(root):
            logs = sh("podman", "logs", name, check=False).stdout
            if re.search(pattern, logs, re.M):
                return name
        time.sleep(0.5)
    raise AssertionError(f"no training container logged {pattern!r} in {timeout} s")


def test_local_mode_stopped_job_keeps_checkpoint_and_model_and_a_second_fit_resumes(
        image, digits_dir, sdk_root, tmp_path, capfd):
    """`podman stop` (SIGTERM, as StopTrainingJob) on the training container mid-job: the SDK
    still packs model.tar.gz, with the partial model, and output.tar.gz, with the failure and
    the stop's checkpoint; a second fit with that output.tar.gz as its `checkpoints` channel resumes and completes."""
    epochs = 3
    root = sdk_root
    first, second = tmp_path / "first", tmp_path / "second"

    def fit():
        # The SDK raises when docker-compose passes the container's exit code (1) on, which
        # compose 1.29 does only sometimes for a container stopped from outside (its podman
        # "stop" event can end the wait first: exit 0); the job's output says what happened.
        with contextlib.suppress(RuntimeError):
            _estimator(_session(root), image, first, epochs=epochs).fit(
                _channels(digits_dir), job_name="local-mode-stop")

    thread = threading.Thread(target=fit)
    thread.start()
    name = _wait_for_line(root, r"^epoch=1 ", 300, thread.is_alive)
    sh("podman", "stop", "--time", "120", name, timeout=150)
    thread.join(timeout=300)
    assert not thread.is_alive()
    first_log = _keep_log("stop", capfd.readouterr().out)
    assert "success" not in _tar_names(first / "output.tar.gz")
    epoch1 = re.search(EPOCH_LINE.format(n=1) + r".*valid_loss=(\S+)", first_log, re.M)
    failure = _tar_text(first / "output.tar.gz", "failure")
    stop = re.match(r"stopped by SIGTERM at epoch (\d), step \d+ of \d+( \(in its validation "
                    r"pass\))?; checkpoint checkpoints/(\S+\.pt); model written from (epoch \d)$",
                    failure)
    assert stop, failure
    kept = stop.group(3)
    assert f"data/checkpoints/{kept}" in _tar_names(first / "output.tar.gz")
    partial = _tar_json(first / "model.tar.gz", "manifest.json")
    assert partial["training"]["complete"] is False
    assert partial["training"]["weights_from"] == stop.group(4)

    estimator = _estimator(_session(root), image, second, epochs=epochs)
    estimator.fit({**_channels(digits_dir),
                   "checkpoints": f"file://{first / 'output.tar.gz'}"},
                  job_name="local-mode-resume")
    second_log = _keep_log("resume", capfd.readouterr().out)
    assert f"checkpoints channel: {kept} copied" in second_log
    assert re.search(rf"resumed after epoch \d, step \d+ of \d+ \(of {epochs} epochs\)",
                     second_log)
    assert not re.search(EPOCH_LINE.format(n=1), second_log, re.M)  # not trained again
    assert re.search(EPOCH_LINE.format(n=epochs), second_log, re.M)
    manifest = _tar_json(second / "model.tar.gz", "manifest.json")
    assert manifest["training"]["complete"] is True
    assert manifest["training"]["epochs_completed"] == epochs
    history = _tar_json(second / "output.tar.gz", "data/metrics.json")["history"]
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert f"{history[0]['valid_loss']:.6g}" == epoch1.group(1)  # the first job's epoch 1


# ---------------------------------------------------------------------------- two instances
def test_local_mode_two_instances_train_one_model_with_ddp_across_containers(
        image, digits_dir, sdk_root, tmp_path, capfd):
    """instance_count=2: local mode starts algo-1 and algo-2 on one compose network with
    SageMaker's resourceconfig.json in each; torchrun joins them (gloo) and each rank trains on
    half the photos per step; rank 0 (algo-1) writes the one model."""
    epochs = 2
    root = sdk_root
    out = tmp_path / "out"
    estimator = _estimator(_session(root), image, out, instance_count=2, epochs=epochs,
                           **{"debugger-rules": True})  # its summary counts the steps
    estimator.fit(_channels(digits_dir), job_name="local-mode-ddp")
    log = _keep_log("two-instances", capfd.readouterr().out)
    launches = re.findall(r"^.*(algo-\d)-\w+ +\|.*starting DDP: .*--nnodes=2 .*--node_rank=(\d) "
                          r"--master_addr=(algo-1-\w+)", log, re.M)
    assert sorted((host, rank) for host, rank, _ in launches) == [("algo-1", "0"),
                                                                  ("algo-2", "1")], launches
    assert re.search(r"^.*algo-2-\w+ +\|.* rank1 INFO train\.loop: epoch 2:", log, re.M)
    assert len(re.findall(r"Reporting training SUCCESS", log)) == 2
    # One model, from rank 0.
    names = _tar_names(out / "model.tar.gz")
    assert names.count("manifest.json") == 1 and names.count("model.pt2") == 1
    assert _tar_json(out / "model.tar.gz", "manifest.json")["training"]["complete"] is True
    # Rank 0 took steps of its half: ceil(ceil(200 / 2) / 32) = 4 per epoch, not 7 alone.
    summary = _tar_json(out / "output.tar.gz", "data/report/summary.json")
    assert summary["statistics"]["steps"] == epochs * math.ceil(math.ceil(TRAIN_PHOTOS / 2) /
                                                                HP["batch-size"])
    history = summary["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]  # it learns
    states = sh("podman", "ps", "-a", "--format", "{{.Names}} {{.ExitCode}}").stdout
    exits = [line.split()[1] for line in states.splitlines()
             if line.split()[0] in _compose_containers(root)]
    assert exits == ["0", "0"], states
