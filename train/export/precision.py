"""What each serving precision costs in accuracy, measured by the training job on the program
it exported.

serve may run the model in a reduced precision where the host has the hardware for it (bf16 on
CPUs with AVX512-BF16 or AMX, fp16 and bf16 on GPUs), but only where the accuracy recorded here
is within a tolerance of fp32's (serve/precision.py). So after the export, the job loads the
program as serve does and evaluates it on the test channel (else valid) in each precision of
the contract's table (contract/precisions.py) that it measures on its device, under
``torch.autocast`` as serve runs it: top-1, top-5, and how often the top-1 class agrees with
fp32's. fp16 is measured on a GPU only (a CPU has no fast fp16).

A precision with a program of its own is measured where the job wrote that program: int8
(train/export/quantize.py) on the CPU, as the reference decomposition of that program (serve runs it
compiled into oneDNN int8 kernels, which round differently in the last bit; the tests hold the
two to one photo of each other).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from contract import precisions
from contract.artifact import file_sha256

logger = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate(program_path: Path, batches, device: torch.device, split: str,
             programs: dict[str, Path] | None = None) -> dict:
    """Top-1, top-5 and top-1 agreement with fp32 of the exported program at ``program_path``
    in each precision ``contract.precisions.measured_on(device.type)``, and of each precision's
    own program in ``programs`` (precision name -> file, e.g. ``{"int8": .../model-int8.pt2}``)
    on the first device type it runs on.

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
    runs = [(p, module, device) for p in precisions.measured_on(device.type)]
    for name, path in (programs or {}).items():
        precision = precisions.get(name)
        if precision.prepare is not None:
            precision.prepare()  # what loading and running the program needs (int8's ops)
        runs.append((precision, torch.export.load(str(path)).module(),
                     torch.device(precision.devices[0])))
    for precision, run_module, run_device in runs:
        dtype = precision.autocast_dtype()
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
        if precision.name == "fp32":
            reference = pred
        agree = int((pred == reference).sum())
        out[precision.name] = {"top1": top1 / seen, "top5": top5 / seen,
                               "agreement_with_fp32": agree / seen}
        if precision.program is not None:  # serve checks the file against it before loading it
            path = Path(programs[precision.name])
            out[precision.name].update(program=path.name, program_sha256=file_sha256(path))
        out["images"] = seen
    logger.info("serving precisions on %s (%d images): %s", split, out.get("images", 0),
                ", ".join(f"{p} top-1 {v['top1']:.4f}" for p, v in out.items()
                          if isinstance(v, dict)))
    return out
