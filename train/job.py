"""What one training process is given: where it reads and writes, and what it trains with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Job:
    """Where a training process reads and writes, and what it trains with (train/entry.py
    fills it from /opt/ml; train/worker.py reads it from JSON in each DDP rank).

    ``channels``: channel name -> folder. ``hyperparameters``: typed (train.hyperparameters).
    """

    channels: dict[str, str]
    hyperparameters: dict
    model_dir: str
    output_data_dir: str
    checkpoint_dir: str
    input_config_dir: str
    job_name: str = "local"
