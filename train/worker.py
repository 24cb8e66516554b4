"""``python -m train.worker JOB.json``: one rank of a DDP group, started by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; the process group uses NCCL on GPUs and gloo on
CPUs. A failing rank writes the cause to output/failure (the first rank to fail wins) and exits 1;
torchrun then stops the others and train.entry reports the cause. SIGTERM from torchrun stops
the rank gracefully (train/stop_signal.py): every rank stops after the same step.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback

import torch.distributed as dist

from train import loop, stop_signal
from train.distributed import Dist
from train.errors import TrainingError, write_failure
from train.job import Job


def main(job_file: str) -> int:
    with open(job_file) as f:
        job = Job.from_dict(json.load(f))
    output_dir = os.path.dirname(job.output_data_dir.rstrip("/"))
    stop_signal.install(on_deadline=lambda reason: write_failure(output_dir, reason))
    d = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
             local_rank=int(os.environ["LOCAL_RANK"]),
             local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s rank{d.rank} %(levelname)s %(name)s: %(message)s")
    d.join()
    try:
        loop.run(job, d)
        return 0
    except TrainingError as exc:
        write_failure(output_dir, str(exc))
        logging.error("rank %d failed: %s", d.rank, exc)
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, the cause in the failure file
        traceback.print_exc()
        write_failure(output_dir, f"rank {d.rank}: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
