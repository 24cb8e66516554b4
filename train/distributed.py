"""One training process's place in its DDP group, and the collective calls the loop makes.

A job runs alone (one CPU or GPU: rank 0 of 1, every call below is then local and free) or as
one rank of a group started by torchrun (train/entry.py decides; train/worker.py joins the
group: NCCL on GPUs, gloo on CPUs). Every rank makes the same collective calls in the same
order, or the group hangs: the loop calls them at the same points on every rank.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the DDP group (rank 0 of 1 when alone): ``local_world_size`` is
    the training processes on this host; ``flags`` a gloo group of the same ranks for the
    per-step stop agreement on GPUs (``any``), None where the default group is gloo already."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    flags: object = None

    def join(self) -> None:
        """Join the group torchrun started: NCCL on GPUs, with a gloo group beside it for host
        flags; gloo on CPUs."""
        if torch.cuda.is_available():
            dist.init_process_group("nccl")
            self.flags = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that prints metrics and writes files."""
        return self.rank == 0

    def device(self) -> torch.device:
        """This rank's device: GPU ``local_rank`` (made current, with cuDNN's autotuning on)
        when there are GPUs, else the CPU."""
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            # cuDNN times its convolution algorithms once per input shape and keeps the
            # fastest: a training job's shapes are fixed (its last batch aside).
            torch.backends.cudnn.benchmark = True
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def wrap(self, net: torch.nn.Module, cuda: bool, find_unused: bool) -> torch.nn.Module:
        """``net`` in DistributedDataParallel for the gradient all-reduce. ``find_unused``:
        some parameters get no gradient (a frozen backbone), which DDP must be told, at the
        cost of walking the whole autograd graph every step, so only while it is so. Drop the
        previous wrapper first: its destructor removes its gradient hooks."""
        return torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[self.local_rank] if cuda else None,
            find_unused_parameters=find_unused)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the ranks (float64 on ``device``, NCCL's or gloo's)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank. On GPUs through the gloo group, on the host:
        an NCCL all-reduce read back with ``.item()`` would wait for every kernel queued
        before it, once per step."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0],
                         device="cpu" if self.flags is not None else device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.flags)
        return bool(t.item())

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (any picklable object), in rank order."""
        if not self.enabled:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.enabled:
            dist.barrier()


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
