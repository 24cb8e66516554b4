"""Which batch sizes a worker runs and forms, from the forward's measured cost at each size.

A compiled program runs one batch size only, so a batch of ``n`` images runs as one or more
compiled sizes, the last one padded with blank images. Padding is not free (a batch of 6 padded
to 8 computes 8), and on some CPUs a larger batch costs more per image than a smaller one (the
int8 program on a 2-vCPU Zen 4 ran batch 8 at about the cost per image of batch 1): so the warm-up
times every compiled size, and each batch size from 1 to the max runs as one forward of the
smallest compiled size that holds it, unless a sequence of sizes is cheaper by more than
``COST_MARGIN`` by those times (``Plan.chunks``). The scheduler forms batches of at most
``Plan.max_batch``: the largest size that runs as one forward and costs at most ``COST_MARGIN``
more per image than the cheapest size. Under load a larger batch pays even where the warm-up
found the cost per image flat: each forward costs the worker more than its images (the
batcher's wake-ups, the turns with the decodes, the Python around it), and a flat profile's
cheapest size is the warm-up's noise (benchmarks/README.md, "Where the cores go").
"""

from __future__ import annotations

from dataclasses import dataclass

# A batch size is formed if its cost per image is within this share of the cheapest size's:
# warm-up timings differ from one start to the next by more than a few percent
# (benchmarks/README.md, "Where the cores go").
COST_MARGIN = 0.10


# Each compiled size is a compile (tens of seconds on a small CPU) on a host's first start.
MAX_SIZES = 8


def sizes_to_compile(max_batch: int) -> list[int]:
    """The batch sizes compiled for a max batch of ``max_batch``: the powers of two below it and
    ``max_batch`` itself (1, 2, 4, 8 for 8; 1, 2, 4, 8, 16, 32 for 32), so that a batch pads by
    less than half at worst; at most MAX_SIZES of them (1 and the largest others); ascending."""
    sizes = sorted({min(2 ** i, max_batch) for i in range(max_batch.bit_length() + 1)})
    return sizes if len(sizes) <= MAX_SIZES else [1] + sizes[1 - MAX_SIZES:]


def compiled_size(n: int, sizes: list[int]) -> int:
    """The compiled size that runs a batch of ``n`` images: the smallest of ``sizes``
    (ascending) that holds it, else the largest."""
    return next((size for size in sizes if size >= n), sizes[-1])


@dataclass(frozen=True)
class Plan:
    """How each batch size runs. ``costs``: the measured forward time (ms) of each size the
    program runs; ``runs[n]``: the sizes a batch of ``n`` images runs as, in order."""

    costs: dict[int, float]
    runs: dict[int, tuple[int, ...]]
    max_batch: int

    def chunks(self, n: int) -> list[tuple[int, int, int]]:
        """``(start, stop, size)`` for a batch of ``n`` images: images ``start:stop`` run at
        compiled size ``size`` (padded when ``stop - start < size``). Sizes over the plan's
        largest run as chunks of it.

        Raises:
            ValueError: ``n`` < 1.
        """
        if n < 1:
            raise ValueError(f"a batch has at least one image, not {n}")
        out, start, largest = [], 0, max(self.runs)
        while start < n:
            for size in self.runs[min(n - start, largest)]:
                stop = min(start + size, n)
                out.append((start, stop, size))
                start = stop
                if start >= n:
                    break
        return out

    def ms(self, n: int) -> float:
        """The planned forward time (ms) of a batch of ``n`` images (1 to the largest size)."""
        return sum(self.costs[size] for size in self.runs[n])

    def describe(self) -> str:
        """One line for the log: the cost per image of each compiled size and the max batch."""
        sizes = ", ".join(f"{size}: {ms / size:.1f}" for size, ms in sorted(self.costs.items()))
        return f"ms per image at batch {sizes}; batches of up to {self.max_batch} images"


def plan(costs: dict[int, float], largest: int) -> Plan:
    """How to run each batch of 1 to ``largest`` images with the sizes in ``costs`` (size ->
    measured ms for one forward at that size, the smallest size 1): as one forward of the
    smallest size that holds it (padded) where that costs at most ``COST_MARGIN`` more than the
    cheapest sequence of sizes, else as that sequence; and the max batch worth forming.

    Raises:
        ValueError: no size 1 in ``costs`` (a batch of one must run unpadded).
    """
    if 1 not in costs:
        raise ValueError(f"the costs must include batch size 1, not only {sorted(costs)}")
    best: list[float] = [0.0] + [float("inf")] * largest
    first: list[int] = [0] * (largest + 1)
    for n in range(1, largest + 1):
        for size, ms in sorted(costs.items(), reverse=True):  # a tie goes to fewer forwards
            total = ms + best[max(0, n - size)]
            if total < best[n]:
                best[n], first[n] = total, size
    runs, cost = {}, {}
    sizes = sorted(costs)
    for n in range(1, largest + 1):
        one = compiled_size(n, sizes)
        if one >= n and costs[one] <= best[n] * (1 + COST_MARGIN):
            runs[n], cost[n] = (one,), costs[one]  # one forward: fewer per-forward costs
            continue
        left, seq = n, []
        while left > 0:
            seq.append(first[left])
            left -= min(first[left], left)
        runs[n], cost[n] = tuple(seq), best[n]
    cheapest = min(best[n] / n for n in range(1, largest + 1))
    # Only sizes that run as one forward: a batch run as two waits for the second for nothing.
    max_batch = max(n for n in range(1, largest + 1)
                    if len(runs[n]) == 1 and cost[n] / n <= cheapest * (1 + COST_MARGIN))
    return Plan(dict(costs), runs, max_batch)
