"""An int8 program of the trained network for CPU serving, through torchao's PT2E flow.

Static quantization with torchao's X86InductorQuantizer (per-channel int8 weights, per-tensor
uint8 activations, the recipe torchao documents for x86 CPUs), calibrated on photos of the
train channel under the evaluation transform, so that the activation ranges are those of the
images the endpoint will see. The result is saved as a second ``torch.export`` program beside
``model.pt2``; serve compiles it with inductor (with torchao's x86 lowering passes, which turn
the quantize/dequantize pairs into oneDNN int8 kernels: VNNI or AMX). Uncompiled it runs the
reference decomposition, slower than fp32, so serve never runs it eagerly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from contract.artifact import INT8_PROGRAM
from contract.precisions import import_x86_quantizer
from train.data import skip_collate
from train.export.artifact import save_program

logger = logging.getLogger(__name__)


def calibration_batches(dataset, images: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Up to ``images`` photos of ``dataset`` (a train.data.ChannelDataset with the evaluation
    transform), spread evenly over it (it is sorted by class, so every class is seen when
    ``images`` >= the number of classes), as float32 [N, 3, crop, crop] batches. Unreadable
    photos are skipped."""
    total = len(dataset)
    count = min(images, total)
    indices = sorted({i * total // count for i in range(count)}) if count else []
    for start in range(0, len(indices), batch_size):
        images, _, _ = skip_collate([dataset[i] for i in indices[start:start + batch_size]])
        if images.numel():
            yield images


@torch.no_grad()
def quantize(model: nn.Module, batches, crop: int, max_batch: int) -> torch.export.ExportedProgram:
    """Quantize ``model`` (eval mode, float32, on the CPU) to int8 and export it with a
    dynamic batch dimension (1 to ``max_batch``).

    Args:
        batches: calibration inputs, float32 [N, 3, crop, crop] each (``calibration_batches``).

    Returns:
        The int8 program: input float32 NCHW [B, 3, crop, crop], output float32 logits.

    Raises:
        ValueError: no calibration image.
        Whatever torch.export or torchao raise for a network they cannot quantize (the
        caller logs it and the artifact goes without int8).
    """
    xiq = import_x86_quantizer()  # first: it imports torchao quietly
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = (torch.zeros(2, 3, crop, crop),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    # strict (dynamo) export: it records one source partition per module call, which the
    # quantizer's pattern matching needs (non-strict export merges the two calls of a ResNet
    # block's shared ReLU into one partition and the quantizer rejects it).
    graph = torch.export.export(model, example, dynamic_shapes=dynamic, strict=True).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    seen = 0
    for images in batches:
        prepared(images)
        seen += len(images)
    if not seen:
        raise ValueError("no readable calibration image in the train channel")
    converted = convert_pt2e(prepared)
    # convert_pt2e adds the int8 weights as new constants and leaves the float ones in place,
    # unused: drop them, or the program carries the model twice (fp32 + int8).
    used = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name, _ in list(converted.named_parameters()) + list(converted.named_buffers()):
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, leaf)
    logger.info("int8 program calibrated on %d training images", seen)
    return torch.export.export(converted, example, dynamic_shapes=dynamic)


def write(model_dir: Path, program: torch.export.ExportedProgram) -> Path:
    """Save ``program`` as ``model_dir/model-int8.pt2`` (atomically); returns its path.

    Raises:
        TrainingError: it cannot be written (disk full, permissions), naming the cause; no
            temporary file is left.
    """
    path = Path(model_dir) / INT8_PROGRAM
    save_program(program, path, "the int8 program")
    return path
