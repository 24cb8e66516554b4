"""What one training process is given: where it reads and writes, and what it trains with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.hyperparameters import Hyperparameters


@dataclass
class Job:
    """Where a training process reads and writes, and what it trains with (train/entry.py
    fills it from /opt/ml; train/worker.py reads it from JSON in each DDP rank).

    ``channels``: channel name -> folder. ``hyperparameters``: typed (train.hyperparameters).
    """

    channels: dict[str, str]
    hyperparameters: Hyperparameters
    model_dir: str
    output_data_dir: str
    checkpoint_dir: str
    input_config_dir: str
    job_name: str = "local"

    def as_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values, the hyperparameters under the names users type."""
        return dict(self.__dict__, hyperparameters=self.hyperparameters.as_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Job:
        """The job that ``as_dict`` returned (read back from JSON in a DDP rank).

        Raises:
            TypeError: a field or hyperparameter missing or unknown.
        """
        return cls(**dict(values, hyperparameters=Hyperparameters.from_dict(
            values["hyperparameters"])))
