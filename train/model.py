"""The network: any torchvision classification model with a new head, and its pretrained weights.

The head swap is generic: ``torchvision.models.get_model(arch, num_classes=N)`` builds the model
with the right head, and the ImageNet state_dict is loaded without the tensors whose shapes differ
(the old 1000-class head). The tensors that were loaded are the "backbone", the rest the "head";
freezing the backbone is then the same code for every architecture.

Pretrained weights come from, in order: a ``pretrained`` channel holding a state_dict file
(network-isolated jobs), torchvision's weights cache ($TORCH_HOME, filled at image build time),
a download by torchvision. With none of them the job fails unless ``pretrained=false``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from train.errors import TrainingError

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
DOWNLOAD_TIMEOUT_S = 60.0
# A state_dict for the same architecture fills all but the head (resnet50: 318 of 320 tensors);
# far fewer means a file made for another architecture.
MIN_MATCHED_SHARE = 0.8
# Every trainable BatchNorm layer torch.nn has, named publicly rather than through their private
# base class (nn.modules.batchnorm._BatchNorm).
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def build(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised ``arch`` with a ``num_classes`` head (torchvision's default init)."""
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TrainingError("the pretrained file is not a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _from_channel(channel_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(p for p in Path(channel_dir).rglob("*") if p.suffix in STATE_DICT_SUFFIXES)
    if len(files) != 1:
        raise TrainingError(
            f"the pretrained channel must hold exactly one state_dict file "
            f"({'/'.join(STATE_DICT_SUFFIXES)}); found {len(files)} in {channel_dir}"
        )
    try:
        obj = torch.load(files[0], map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise TrainingError(f"cannot read pretrained state_dict {files[0].name}: {exc}") from exc
    logger.info("pretrained weights from the pretrained channel: %s", files[0].name)
    return _unwrap_state_dict(obj)


def _from_torchvision(arch: str) -> dict[str, torch.Tensor]:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = hub_dir / Path(weights.url).name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state_dict = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch
        raise TrainingError(
            f"no pretrained weights for {arch}: no pretrained channel, not in torchvision's cache "
            f"({cached}), and the download failed ({exc}); add a pretrained channel with a "
            f"state_dict, or set pretrained=false"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    logger.info("pretrained weights %s from torchvision (%s)", weights, cached)
    return state_dict


def load_pretrained(model: nn.Module, arch: str, channel_dir: str | None) -> set[str]:
    """Load ImageNet weights into ``model`` except its head.

    Returns:
        The names of the parameters and buffers that were loaded (the backbone).

    Raises:
        TrainingError: no weights to be had, or a state_dict that does not fit ``arch``.
    """
    source = _from_channel(Path(channel_dir)) if channel_dir else _from_torchvision(arch)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    share = len(matched) / max(len(own), 1)
    if share < MIN_MATCHED_SHARE:
        raise TrainingError(
            f"the pretrained state_dict does not fit {arch}: {len(matched)} of {len(own)} "
            f"tensors match by name and shape"
        )
    model.load_state_dict(matched, strict=False)
    logger.info("loaded %d of %d tensors; new: %s", len(matched), len(own),
                ", ".join(sorted(set(own) - set(matched)))[:200])
    return set(matched)


def set_backbone_frozen(model: nn.Module, backbone: set[str], frozen: bool) -> int:
    """Freeze or unfreeze the parameters named in ``backbone``; returns the trainable count."""
    for name, param in model.named_parameters():
        param.requires_grad = not (frozen and name in backbone)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode, so a frozen backbone's
    running statistics stay the pretrained ones. Call after ``model.train()``."""
    for module in model.modules():
        if isinstance(module, BATCHNORM):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


@contextlib.contextmanager
def batchnorm_stats_kept(model: nn.Module):
    """BatchNorm layers keep their running statistics inside the block (momentum 0)."""
    layers = [m for m in model.modules() if isinstance(m, BATCHNORM)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
