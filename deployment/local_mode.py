"""The SageMaker SDK's local mode as ``deploy.py local`` uses it: checks that the SDK can run,
a LocalSession that sends no telemetry, and the removal of the containers it leaves behind.

The SDK (2.x, sagemaker/local/image.py) runs every training job, endpoint and transform job as
a docker-compose project in a temporary folder under ``local.container_root`` and never removes
the containers it made (training runs ``up --abort-on-container-exit``, an endpoint's ``down``
only stops it), so a run that names its own container root can find them by their compose
label and remove them.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

COMPOSE_WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
ENGINE_HELP = ("the SDK's local mode needs a docker command and docker compose (v2, or Debian's "
               "docker-compose 1.29) on a Docker engine, or podman's service through DOCKER_HOST "
               "(docs/operations.md, 'local')")


def engine_error(exc: BaseException) -> str | None:
    """One line with the fix when ``exc`` is the SDK failing for want of the commands its
    local mode runs, else None: ``docker`` (it runs ``docker compose version`` first, and a
    missing command is an uncaught FileNotFoundError there) and docker compose (v2 or
    ``docker-compose``: an ImportError)."""
    if isinstance(exc, FileNotFoundError) and exc.filename in ("docker", "docker-compose"):
        return f"no {exc.filename} command: {ENGINE_HELP}"
    if isinstance(exc, ImportError) and "Docker Compose is not installed" in str(exc):
        return f"no docker compose: {ENGINE_HELP}"
    return None


def sdk_config() -> dict:
    """The SDK's defaults config (its admin and user files, as the SDK loads them) with
    ``TelemetryOptOut`` set: the SDK otherwise sends a request to S3 after each call, and on a
    machine that cannot reach AWS logs its failure with a traceback (about 70 lines a call)."""
    from sagemaker.config import load_sagemaker_config

    config = load_sagemaker_config() or {}
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault(
        "Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def make_session(boto_session, serving_port: int, container_root: Path):
    """A LocalSession on ``boto_session`` (its region; no credentials needed) whose endpoints
    and transform jobs listen on host port ``serving_port`` and whose compose projects go under
    ``container_root``; the user's local-mode settings (~/.sagemaker/config.yaml) are kept
    otherwise."""
    from sagemaker.local import LocalSession

    from deployment.sessions import validate_sdk_configs_once

    validate_sdk_configs_once()
    # The SDK warns "RootlessDocker not detected" on every invocation: nothing is wrong.
    logging.getLogger("sagemaker.local.utils").setLevel(logging.ERROR)
    session = LocalSession(boto_session=boto_session, sagemaker_config=sdk_config())
    config = dict(session.config or {})
    local = dict(config.get("local") or {})
    local.update(local_code=True, serving_port=int(serving_port),
                 container_root=str(container_root))
    session.config = {**config, "local": local}
    return session


def remove_containers(container_root: Path, docker: str = "docker") -> list[str]:
    """Remove (with ``docker rm -f``) every container of a compose project that ran under
    ``container_root``; returns their IDs. The compose label holds the project's folder; the
    ``{{.Labels}}`` format differs between Docker and podman, so the folder is looked for in
    the text. Nothing to do without a docker command."""
    if shutil.which(docker) is None:
        return []
    listed = subprocess.run(
        [docker, "ps", "-a", "--filter", f"label={COMPOSE_WORKING_DIR_LABEL}", "--format",
         "{{.ID}} {{.Labels}}"], capture_output=True, text=True)
    root = f"{Path(container_root).resolve()}/"
    ids = [line.split()[0] for line in listed.stdout.splitlines() if root in line]
    if ids:
        subprocess.run([docker, "rm", "-f", *ids], capture_output=True, text=True)
    return ids


def failure_reason(job_dir: Path) -> str | None:
    """The FailureReason of the local training job whose output.tar.gz is in ``job_dir`` (its
    ``failure`` file, first 1,024 characters), or None when it has none. The SDK's fit cannot
    tell: it raises only when docker-compose passes a non-zero exit code on, which compose 1.29
    does not always do for a container stopped from outside."""
    archive = Path(job_dir) / "output.tar.gz"
    if not archive.is_file():
        return None
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile("failure")
        except KeyError:
            return None
        return member.read(1024).decode("utf-8", "replace").strip() if member else None
