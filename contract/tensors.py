"""The evaluation preprocessing's last step, on tensors: 8-bit pixels to the model's input.

Both sides scale and normalise on the device that runs the model, from uint8 pixels: the
training job's DataLoader workers send uint8 (a quarter of float32's bytes through shared memory,
pinned memory and the host-to-device copy) and the training process normalises each batch on
its GPU; serve normalises each batch of decoded images the same way. The arithmetic is
torchvision's ``ToDtype(torch.float32, scale=True)`` then ``Normalize(mean, std)`` (multiply by
1/255, subtract the mean, divide by the std, in float32), so the result is bit for bit the
transform's on any device (each step is one correctly rounded float32 operation).

This module imports torch, unlike the rest of the package: only modules that run a model import
it.
"""

from __future__ import annotations

import torch


def mean_std(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` (three numbers each, on the 0-1 scale) as float32 [1, 3, 1, 1]
    tensors on ``device``, the shape ``normalise`` broadcasts over a batch."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] pixels (any memory format: channels_last stays channels_last) to
    float32 [N, 3, H, W] scaled to 0-1 and normalised with ``mean`` and ``std`` ([1, 3, 1, 1],
    from ``mean_std``), on the images' device.

    Raises:
        TypeError: ``images`` is not uint8.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    return images.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
