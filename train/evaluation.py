"""An evaluation pass of one training process over a channel: loss, top-1 and top-5 accuracy
summed over the ranks, and optionally the confusion matrix gathered from them."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from train import outputs
from train.distributed import Dist
from train.errors import TrainingError
from train.stop_protocol import StopAgreed


@torch.no_grad()
def evaluate(split: str, batches: Iterable, forward: Callable, classes: int, d: Dist,
             device: torch.device, stop_agreed: Callable[[], bool], confusion: bool = False
             ) -> tuple[dict, outputs.Confusion | None]:
    """Loss, top-1 and top-5 accuracy on ``split`` (summed over ranks); optionally the
    confusion matrix (kept sparse: memory grows with the images, not the classes squared).

    Args:
        batches: ``(images, labels, skipped)`` batches of this rank's shard (train/feed.py).
        forward: ``(images, labels) -> (logits [N, classes], mean loss, labels on the device)``.
        classes: the number of classes.
        stop_agreed: asked after each batch, on every rank (train/stop_protocol.py).

    Returns:
        ``{split}_loss``, ``{split}_accuracy``, ``{split}_top5_accuracy`` (fractions), and the
        matrix (None without ``confusion``).

    Raises:
        StopAgreed: every rank agreed to stop (the pass is abandoned).
        TrainingError: no readable image in the channel.
    """
    pairs: list[torch.Tensor] = []
    loss_sum, correct, top5, seen = 0.0, 0, 0, 0
    for images, labels, _ in batches:
        if images.numel() > 0:
            logits, loss, labels = forward(images, labels)
            n = labels.shape[0]
            loss_sum += loss.item() * n
            pred = logits.argmax(1)
            correct += int((pred == labels).sum())
            k = min(5, classes)
            top5 += int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
            seen += n
            if confusion:
                pairs.append(torch.stack([labels.cpu(), pred.cpu()]))
        if stop_agreed():
            raise StopAgreed(split)
    loss_sum, correct, top5, seen = d.sum([loss_sum, correct, top5, seen], device)
    matrix = None
    if confusion:
        mine = torch.cat(pairs, dim=1) if pairs else torch.zeros(2, 0, dtype=torch.int64)
        if d.enabled:
            mine = torch.cat(d.gather(mine), dim=1)
        matrix = outputs.Confusion.from_pairs(mine[0].numpy(), mine[1].numpy(), classes)
    if seen == 0:
        raise TrainingError(f"no readable image in the {split} channel")
    result = {f"{split}_loss": loss_sum / seen, f"{split}_accuracy": correct / seen,
              f"{split}_top5_accuracy": top5 / seen}
    return result, matrix
