"""``train.entry:main``: what the sagemaker-training toolkit calls for ``docker run IMAGE train``.

It reads the job through the toolkit's ``Environment`` (hyperparameters, channels, hosts, GPUs;
``SAGEMAKER_BASE_DIR`` moves /opt/ml for host runs and tests), checks the hyperparameters, and
either trains in this process (one CPU or one GPU) or starts one process per GPU on every host
with torchrun, which runs ``train.worker`` as a DDP group (NCCL on GPUs, gloo on CPUs).
The toolkit turns a raised ``TrainingError`` into output/failure and exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sagemaker_training import environment

from train import hyperparameters, loop
from train.errors import TrainingError

logger = logging.getLogger(__name__)

MASTER_PORT = 29500


def _checkpoint_dir(env: environment.Environment) -> str:
    """``checkpointconfig.json``'s LocalPath when SageMaker wrote one, else <base>/checkpoints."""
    config = Path(env.input_config_dir) / "checkpointconfig.json"
    if config.is_file():
        local = json.loads(config.read_text()).get("LocalPath")
        if local:
            return local
    return os.path.join(environment.base_dir, "checkpoints")


def job_from_environment(env: environment.Environment) -> loop.Job:
    """The Job of this container: channels, typed hyperparameters and the /opt/ml folders.

    Raises:
        TrainingError: a bad or unknown hyperparameter.
    """
    return loop.Job(
        channels=dict(env.channel_input_dirs),
        hyperparameters=hyperparameters.parse(env.hyperparameters),
        model_dir=env.model_dir,
        output_data_dir=env.output_data_dir,
        checkpoint_dir=_checkpoint_dir(env),
        input_config_dir=env.input_config_dir,
        job_name=env.job_name or "local",
    )


def _torchrun(env: environment.Environment, job: loop.Job, nproc: int) -> None:
    hosts = sorted(env.hosts)
    master = hosts[0] if len(hosts) > 1 else "127.0.0.1"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job.__dict__, f)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={len(hosts)}", f"--nproc_per_node={nproc}",
        f"--node_rank={hosts.index(env.current_host)}",
        f"--master_addr={master}", f"--master_port={MASTER_PORT}",
        "-m", "train.worker", f.name,
    ]
    logger.info("starting DDP: %s", " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    os.unlink(f.name)
    if result.returncode != 0:
        failure = Path(env.output_dir) / "failure"
        reason = failure.read_text() if failure.exists() else ""
        raise TrainingError(reason or f"a DDP training process failed (torchrun exit code "
                                      f"{result.returncode}); see the log above")


def main() -> None:
    """Run the training job described by /opt/ml (or $SAGEMAKER_BASE_DIR).

    Raises:
        TrainingError: bad input; the toolkit reports its message as the FailureReason.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                       "%(message)s")
    env = environment.Environment()
    job = job_from_environment(env)
    nproc = job.hyperparameters["processes-per-host"] or max(env.num_gpus, 1)
    if nproc * len(env.hosts) > 1:
        _torchrun(env, job, nproc)
    else:
        loop.run(job)
