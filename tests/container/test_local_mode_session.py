"""deploy.py local's LocalSession and clean-up, without an engine: telemetry off with the user's
SDK settings kept, the serving port and container root set, one line for a missing docker or
docker compose, and the removal of the SDK's containers (a fake docker on PATH)."""

from __future__ import annotations

import os
import stat

import boto3
import pytest

from deployment import local_mode


@pytest.fixture
def user_config(tmp_path, monkeypatch):
    """An SDK defaults file of the user's (a default bucket) and a local-mode config."""
    config = tmp_path / "sdk.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      Session:\n        DefaultS3Bucket: users-bucket\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    local = tmp_path / "home" / ".sagemaker" / "config.yaml"
    local.parent.mkdir(parents=True)
    local.write_text("local:\n  container_config:\n    shm_size: 1g\n")
    # ~/.sagemaker/config.yaml, which the SDK expands when it is first imported.
    import sagemaker.config.config

    monkeypatch.setattr(sagemaker.config.config, "_DEFAULT_LOCAL_MODE_CONFIG_FILE_PATH",
                        str(local))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return config


def test_the_session_sends_no_telemetry_and_keeps_the_users_settings(user_config, tmp_path):
    from sagemaker.config.config_schema import TELEMETRY_OPT_OUT_PATH
    from sagemaker.utils import resolve_value_from_config

    session = local_mode.make_session(boto3.Session(region_name="eu-west-1"), 18080,
                                      tmp_path / "root")
    # What the SDK's telemetry decorator reads before it sends anything.
    assert resolve_value_from_config(config_path=TELEMETRY_OPT_OUT_PATH,
                                     sagemaker_session=session) is True
    modules = session.sagemaker_config["SageMaker"]["PythonSDK"]["Modules"]
    assert modules["Session"]["DefaultS3Bucket"] == "users-bucket"
    assert session.config["local"] == {"container_config": {"shm_size": "1g"},
                                       "local_code": True, "serving_port": 18080,
                                       "container_root": str(tmp_path / "root")}
    assert session.sagemaker_runtime_client.config == session.config  # the endpoint's port


@pytest.mark.parametrize("exc, line", [
    (FileNotFoundError(2, "No such file or directory", "docker"), "no docker command"),
    (ImportError("Docker Compose is not installed. Local Mode features will not work"),
     "no docker compose"),
    (FileNotFoundError(2, "No such file or directory", "model.tar.gz"), None),
    (ImportError("No module named 'yaml'"), None),
])
def test_a_missing_docker_or_compose_is_one_line_with_the_fix(exc, line):
    found = local_mode.engine_error(exc)
    if line is None:
        assert found is None
    else:
        assert found.startswith(line) and "DOCKER_HOST" in found


@pytest.mark.parametrize("labels", [
    # docker's {{.Labels}}, then podman's
    "com.docker.compose.project=tmpab,com.docker.compose.project.working_dir={dir}",
    "map[com.docker.compose.project:tmpab com.docker.compose.project.working_dir:{dir}]",
])
def test_remove_containers_removes_only_those_under_the_root(tmp_path, monkeypatch, labels):
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    removed = tmp_path / "removed"
    listing = "\n".join([f"aaa {labels.format(dir=root / 'tmp1')}",
                         f"bbb {labels.format(dir=tmp_path / 'rootless' / 'tmp2')}",
                         f"ccc {labels.format(dir=root / 'tmp3')}"])
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\nif [ \"$1\" = ps ]; then cat <<'EOF'\n{listing}\nEOF\n"
                      f"else echo \"$@\" >> {removed}; fi\n")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert local_mode.remove_containers(root) == ["aaa", "ccc"]
    assert removed.read_text().split() == ["rm", "-f", "aaa", "ccc"]


def test_remove_containers_without_docker_does_nothing(tmp_path):
    assert local_mode.remove_containers(tmp_path, docker="no-such-docker-command") == []


def _output_tar(job_dir, failure: str | None):
    import io
    import tarfile

    job_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(job_dir / "output.tar.gz", "w:gz") as tar:
        members = {"data/metrics.json": b"{}"}
        if failure is not None:
            members["failure"] = failure.encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_failure_reason_reads_the_jobs_output(tmp_path):
    assert local_mode.failure_reason(tmp_path / "none") is None
    _output_tar(tmp_path / "ok", None)
    assert local_mode.failure_reason(tmp_path / "ok") is None
    _output_tar(tmp_path / "stopped", "stopped by SIGTERM at epoch 2, step 1 of 7\n")
    assert local_mode.failure_reason(tmp_path / "stopped") == \
        "stopped by SIGTERM at epoch 2, step 1 of 7"


@pytest.mark.parametrize("fit_raises", [True, False])
def test_deploy_py_local_stops_at_a_failed_job_whatever_the_sdks_fit_did(
        tmp_path, monkeypatch, capsys, user_config, no_containers, fit_raises):
    """docker-compose 1.29 passes a stopped container's exit code on only sometimes, so the
    SDK's fit may raise or return: either way deploy.py reads the job's failure and deploys
    nothing."""
    from sagemaker.estimator import Estimator
    from sagemaker.model import Model

    from deployment.cli import main
    from tools.datasets import write_digits

    data = write_digits(tmp_path / "digits", image_size=8, per_class=3)
    reason = "stopped by SIGTERM at epoch 2, step 1 of 7; checkpoint checkpoints/x.pt"

    def fit(self, inputs, job_name=None, **kw):
        _output_tar(tmp_path / "out" / job_name, reason)
        if fit_raises:
            raise RuntimeError("Failed to run: docker-compose ... Process exited with code: 1")

    def deploy(self, **kw):
        raise AssertionError("a failed job's model was deployed")

    monkeypatch.setattr(Estimator, "fit", fit)
    monkeypatch.setattr(Model, "deploy", deploy)
    code = main(["local", "--region", "eu-west-1", "--data-dir", str(data), "--output",
                 str(tmp_path / "out"), "--job-name", "stopped-job"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: the training job failed: {reason}" in err
    assert str(tmp_path / "out" / "stopped-job") in err
