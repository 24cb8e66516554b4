"""What each serving precision costs in accuracy, measured by the training job on the program
it exported.

serve may run the model in a reduced precision where the host has the hardware for it (bf16 on
CPUs with AVX512-BF16 or AMX, fp16 and bf16 on GPUs), but only where the accuracy recorded here
is within a tolerance of fp32's (serve/precision.py). So after the export, the job loads the
program as serve does and evaluates it on the test channel (else valid) in fp32 and in each
reduced precision, under ``torch.autocast`` as serve runs it: top-1, top-5, and how often the
top-1 class agrees with fp32's. fp16 is measured on a GPU only (a CPU has no fast fp16).

int8 is measured where the job wrote an int8 program (train/quantize.py): on the CPU, as the
reference decomposition of that program (serve runs it compiled into oneDNN int8 kernels, which
round differently in the last bit; the tests hold the two to one photo of each other).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

from serve.model import AUTOCAST
from train import artifact

logger = logging.getLogger(__name__)



def precisions_for(device: torch.device) -> list[str]:
    """The precisions measured on ``device``: fp32 first, then the reduced ones."""
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


@torch.inference_mode()
def evaluate(program_path: Path, batches, device: torch.device, split: str,
             int8_program: Path | None = None) -> dict:
    """Top-1, top-5 and top-1 agreement with fp32 of the exported program at ``program_path``
    in each precision of ``precisions_for(device)``, and of ``int8_program`` (on the CPU).

    Args:
        batches: an iterable (re-iterable) of ``(images float32 [N, 3, H, W], labels int64 [N],
            skipped)`` as train.data's loaders yield them.
        split: the channel the batches come from, recorded.

    Returns:
        ``{"evaluated_on": split, "images": N, "device": "cpu", "fp32": {"top1": 0.96,
        "top5": 1.0, "agreement_with_fp32": 1.0}, "bf16": {...}, "int8": {..., "program":
        "model-int8.pt2", "program_sha256": "..."}}`` (accuracies 0-1).
    """
    module = torch.export.load(str(program_path)).module().to(device)
    module = module.to(memory_format=torch.channels_last)
    out: dict = {"evaluated_on": split, "device": device.type}
    reference: list[torch.Tensor] = []
    runs = [(p, module, device) for p in precisions_for(device)]
    if int8_program is not None:
        importlib.import_module("torch.ao.quantization.fx._decomposed")  # the int8 ops
        runs.append(("int8", torch.export.load(str(int8_program)).module(), torch.device("cpu")))
    for precision, run_module, run_device in runs:
        dtype = AUTOCAST.get(precision)
        top1 = top5 = seen = 0
        predictions = []
        for images, labels, _ in batches:
            if images.numel() == 0:
                continue
            x = images.to(run_device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(run_device.type, dtype=dtype or torch.float32,
                                enabled=dtype is not None):
                logits = run_module(x).float()
            labels = labels.to(run_device)
            pred = logits.argmax(1)
            k = min(5, logits.shape[1])
            top1 += int((pred == labels).sum())
            top5 += int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
            seen += len(labels)
            predictions.append(pred.cpu())
        if not seen:
            return {}
        pred = torch.cat(predictions)
        if precision == "fp32":
            reference = pred
        agree = int((pred == reference).sum())
        out[precision] = {"top1": top1 / seen, "top5": top5 / seen,
                          "agreement_with_fp32": agree / seen}
        if precision == "int8":  # serve checks the file against it before loading it
            out[precision].update(program=Path(int8_program).name,
                                  program_sha256=artifact.file_sha256(Path(int8_program)))
        out["images"] = seen
    logger.info("serving precisions on %s (%d images): %s", split, out.get("images", 0),
                ", ".join(f"{p} top-1 {v['top1']:.4f}" for p, v in out.items()
                          if isinstance(v, dict)))
    return out
