"""One training step's arithmetic on a device: the batch's normalisation and layout, autocast
(mixed precision), the loss, and the loss-scaled backward and update.

train/loop.py owns the model and decides which step to run; this module owns how a step
computes, so that the loop's epoch reads as bookkeeping.
"""

from __future__ import annotations

import torch
from torch import nn

from contract import tensors
from train import data, model as model_lib


def loss_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The AMP loss scaler for autocast ``dtype``: on for fp16, whose small gradients would
    flush to zero unscaled; off for bf16 (fp32's exponent range) and without autocast."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the model and its batches: channels-last on a GPU (its convolutions' fast
    layout), contiguous on a CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of mixed precision on a GPU: bf16 where it has bf16 tensor cores
    (compute capability 8.0 and later, NVIDIA's CUDA programming guide), else fp16."""
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


class Step:
    """How a batch becomes a loss and an update on ``device``: channels-last on a GPU, autocast
    with ``amp`` (bf16 or fp16, ``amp_dtype``), the loss scaled for fp16."""

    def __init__(self, device: torch.device, pre: data.Preprocess, amp: bool):
        self.device, self.pre, self.amp = device, pre, amp
        self.amp_dtype = amp_dtype(device) if amp else None
        self.memory_format = memory_format(device)
        self.mean_std = tensors.mean_std(pre.mean, pre.std, device)
        self.scaler = loss_scaler(self.amp_dtype)

    def forward(self, model: nn.Module, loss_fn: nn.Module, images: torch.Tensor,
                labels: torch.Tensor):
        """Logits ``[N, classes]``, the mean loss (a scalar) and ``labels`` (int64 ``[N]``) on
        the device, for a batch from the loaders: training's uint8 pixels ``[N, 3, crop, crop]``
        are scaled and normalised here, on the device (contract/tensors.py); the other splits'
        are float32 already."""
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        if images.dtype == torch.uint8:
            images = tensors.normalise(images, *self.mean_std)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = model(images)
            loss = loss_fn(logits, labels)
        return logits, loss, labels

    def update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """The backward of ``loss`` (scaled for fp16) and ``optimizer``'s step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def join_with_no_images(self, model: nn.Module, net: nn.Module,
                            optimizer: torch.optim.Optimizer) -> None:
        """A DDP step of ``model`` (the wrapper of ``net``) on a rank whose whole batch was
        unreadable: a forward and backward on two blank images with a zero loss, so that the
        rank joins the gradient all-reduce (the others would wait for it forever) and adds
        nothing to it; BatchNorm statistics are left as they were."""
        blank = torch.zeros(2, 3, self.pre.crop, self.pre.crop, device=self.device).to(
            memory_format=self.memory_format)
        with model_lib.batchnorm_stats_kept(net):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                loss = model(blank).float().sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
