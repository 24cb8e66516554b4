"""``train.entry:main``: what the sagemaker-training toolkit calls for ``docker run IMAGE train``.

It reads the job through the toolkit's ``Environment`` (hyperparameters, channels, hosts, GPUs;
``SAGEMAKER_BASE_DIR`` moves /opt/ml for host runs and tests), checks the hyperparameters, and
either trains in this process (one CPU or one GPU) or starts one process per GPU on every host
with torchrun, which runs ``train.worker`` as a DDP group (NCCL on GPUs, gloo on CPUs).
The toolkit turns a raised ``TrainingError`` into output/failure and exit code 1.

SIGTERM and SIGINT stop the job gracefully (train/stop_signal.py): in this process directly, or,
under torchrun, forwarded to it; torchrun passes them to every rank and waits up to
``stop_signal.STOP_DEADLINE_S`` for them before it kills them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sagemaker_training import environment

from train import checkpoint, hyperparameters, loop, stop_signal
from train.errors import TrainingError, write_failure
from train.job import Job
from train.stop_protocol import JobStopped

logger = logging.getLogger(__name__)

MASTER_PORT = 29500


def _checkpoints_synced(env: environment.Environment) -> bool:
    """Whether SageMaker syncs the checkpoint folder with S3 (checkpointconfig.json, written
    for a job with ``checkpoint_s3_uri``); the SDK's local mode never does."""
    return (Path(env.input_config_dir) / "checkpointconfig.json").is_file()


def _checkpoint_dir(env: environment.Environment) -> str:
    """``checkpointconfig.json``'s LocalPath when SageMaker wrote one, else <base>/checkpoints."""
    config = Path(env.input_config_dir) / "checkpointconfig.json"
    if config.is_file():
        local = json.loads(config.read_text()).get("LocalPath")
        if local:
            return local
    return os.path.join(environment.base_dir, "checkpoints")


def job_from_environment(env: environment.Environment) -> Job:
    """The Job of this container: channels, typed hyperparameters and the /opt/ml folders.

    Raises:
        TrainingError: a bad or unknown hyperparameter.
    """
    return Job(
        channels=dict(env.channel_input_dirs),
        hyperparameters=hyperparameters.parse(env.hyperparameters),
        model_dir=env.model_dir,
        output_data_dir=env.output_data_dir,
        checkpoint_dir=_checkpoint_dir(env),
        input_config_dir=env.input_config_dir,
        job_name=env.job_name or "local",
    )


def _torchrun(env: environment.Environment, job: Job, nproc: int) -> None:
    hosts = sorted(env.hosts)
    master = hosts[0] if len(hosts) > 1 else "127.0.0.1"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job.as_dict(), f)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={len(hosts)}", f"--nproc_per_node={nproc}",
        f"--node_rank={hosts.index(env.current_host)}",
        f"--master_addr={master}", f"--master_port={MASTER_PORT}",
        # torchrun sends a stop signal on to every rank, then kills them after this long.
        f"--shutdown-timeout={int(stop_signal.STOP_DEADLINE_S) - 5}",
        "-m", "train.worker", f.name,
    ]
    failure = Path(env.output_dir) / "failure"
    if stop_signal.requested():
        os.unlink(f.name)
        raise JobStopped(f"stopped by {stop_signal.signal_name()} before training started")
    logger.info("starting DDP: %s", " ".join(cmd))
    # A session of its own: a terminal's Ctrl-C reaches torchrun through us alone, once.
    proc = subprocess.Popen(cmd, start_new_session=True)
    stop_signal.install(on_signal=lambda signum: proc.send_signal(signal.SIGTERM),
                 on_deadline=lambda reason: (write_failure(env.output_dir, reason),
                                             os.killpg(proc.pid, signal.SIGKILL)))
    returncode = proc.wait()
    os.unlink(f.name)
    reason = failure.read_text() if failure.exists() else ""
    if stop_signal.requested():
        raise JobStopped(reason or f"stopped by {stop_signal.signal_name()}")
    if returncode != 0:
        raise TrainingError(reason or f"a DDP training process failed (torchrun exit code "
                                      f"{returncode}); see the log above")


def install_stop_handler() -> None:
    """Handle SIGTERM and SIGINT (train/stop_signal.py); on the watchdog's deadline the failure
    file under SAGEMAKER_BASE_DIR (/opt/ml) says so."""
    output_dir = os.path.join(environment.base_dir, "output")
    stop_signal.install(on_deadline=lambda reason: write_failure(output_dir, reason))


def main() -> None:
    """Run the training job described by /opt/ml (or $SAGEMAKER_BASE_DIR).

    Raises:
        TrainingError: bad input; the toolkit reports its message as the FailureReason.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                       "%(message)s")
    install_stop_handler()
    env = environment.Environment()
    job = job_from_environment(env)
    if checkpoint.CHANNEL in job.channels:
        checkpoint.seed_from_channel(job.channels[checkpoint.CHANNEL], job.checkpoint_dir)
    nproc = job.hyperparameters.processes_per_host or max(env.num_gpus, 1)
    try:
        if nproc * len(env.hosts) > 1:
            _torchrun(env, job, nproc)
        else:
            loop.run(job)
    except loop.JobStopped:
        # Rank 0, which writes the checkpoints, runs on the first host (_torchrun's node_rank).
        if not _checkpoints_synced(env) and env.current_host == sorted(env.hosts)[0]:
            try:
                checkpoint.keep_in_output(job.checkpoint_dir, job.output_data_dir)
            except TrainingError as exc:  # the stop's own reason is the one to report
                logger.warning("could not keep the checkpoint in the output: %s", exc)
        raise
