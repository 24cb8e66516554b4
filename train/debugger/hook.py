"""The SageMaker Debugger (smdebug) hook, created only when the job is configured for it.

SageMaker writes ``/opt/ml/input/config/debughookconfig.json`` when the job has a
DebugHookConfig (AWS doc: "Configure the Debugger hook to save tensors"); outside SageMaker the
path can be given in ``SMDEBUG_CONFIG_FILE_PATH``. No file: no hook, and no smdebug import.

smdebug 1.0.34 calls ``ndarray.tostring``, which numpy 2 removed; with only the default
collections the error is swallowed and nothing is written (docs/platform.md). We pin numpy < 2, and
refuse to run a hook under numpy 2 rather than save nothing in silence.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from pathlib import Path

import numpy as np

from train.errors import TrainingError

logger = logging.getLogger(__name__)

CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"
# smdebug logs at INFO a line per registered parameter (about 70 for resnet50) and a line per
# rule step range; none of it is news to the user, whose log says where the hook writes. Its
# warnings stay. Read when smdebug is first imported; a user's own setting wins.
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")


def config_path(input_config_dir: str) -> Path | None:
    """The hook config file to use, or None when the job has none."""
    candidates = [os.environ.get(CONFIG_ENV), os.path.join(input_config_dir, "debughookconfig.json")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# What the in-container rules (rules.py, tensor_rules.py) need when the job has no hook config of its own:
# the loss at every step; for weights and gradients only per-tensor reductions (a float per
# tensor instead of the tensor: resnet50's weights and gradients are about 200 MB a save) at
# about RULES_SAVES training steps spread over the job, step 0 included, never closer than
# RULES_MIN_INTERVAL steps. The rules read them through smdebug's ``Tensor.reduction_value``,
# which computes the same reduction from the whole tensor when a job's own hook config
# (SageMaker Debugger) saved that instead. Each reduction is one more pass over the tensor, so
# only what a rule reads: std of weights (PoorWeightInitialization; NaN/inf make it non-finite,
# for ExplodingTensor) and mean |gradient| (VanishingGradient, ExplodingTensor).
RULES_SAVES = 10
RULES_MIN_INTERVAL = 50
RULES_REDUCTIONS = {
    "weights": {"reductions": ["std"], "save_shape": True},
    "gradients": {"abs_reductions": ["mean"]},
}


def rules_save_steps(total_steps: int) -> list[int]:
    """The TRAIN steps at which the rules hook saves weights and gradients: 0, then every
    ``max(RULES_MIN_INTERVAL, ceil(total_steps / RULES_SAVES))`` steps before ``total_steps``."""
    interval = max(RULES_MIN_INTERVAL, -(-int(total_steps) // RULES_SAVES))
    return list(range(0, max(int(total_steps), 1), interval))


def create_hook(input_config_dir: str, model, loss_fn, rules_dir: str | None = None,
                total_steps: int = 0):
    """An smdebug hook with ``model`` and ``loss_fn`` registered, or None.

    From the job's config when there is one (SageMaker Debugger); else, when ``rules_dir`` is
    given, a local hook writing what the in-container rules read to ``rules_dir``, with weights
    and gradients at ``rules_save_steps(total_steps)`` (TRAIN steps); else None.

    Raises:
        TrainingError: numpy 2 is installed, or the job's config is invalid.
    """
    path = config_path(input_config_dir)
    if path is None and rules_dir is None:
        return None
    if int(np.__version__.split(".")[0]) >= 2:
        raise TrainingError(
            f"smdebug 1.0.34 cannot write tensors with numpy {np.__version__} (it calls the "
            f"removed ndarray.tostring); install numpy<2 or remove the debugger hook config"
        )
    smd = import_smdebug()

    if path is not None:
        try:
            hook = smd.Hook.create_from_json_file(str(path))
        except Exception as exc:  # smdebug raises plain exceptions for a bad config
            raise TrainingError(f"invalid debugger hook config {path}: {exc}") from exc
        logger.info("smdebug hook from %s writing to %s", path, hook.out_dir)
    else:
        never = smd.SaveConfigMode(start_step=0, end_step=0)
        steps = rules_save_steps(total_steps)
        hook = smd.Hook(out_dir=rules_dir, include_collections=["losses", "weights", "gradients"],
                        save_config=smd.SaveConfig(mode_save_configs={
                            smd.modes.TRAIN: smd.SaveConfigMode(save_steps=steps),
                            smd.modes.EVAL: never, smd.modes.PREDICT: never,
                            smd.modes.GLOBAL: never}))
        hook.get_collection("losses").save_config = smd.SaveConfig(save_interval=1)
        for name, reductions in RULES_REDUCTIONS.items():
            hook.get_collection(name).reduction_config = smd.ReductionConfig(**reductions)
        logger.info("smdebug hook for the in-container rules writing to %s (weights and "
                    "gradients at steps %s)", rules_dir, ", ".join(map(str, steps)))
    hook.register_module(model)
    hook.register_loss(loss_fn)
    return hook


# smdebug's import loads pandas for code a training process never runs (most of the import's
# time: benchmarks/README.md): any import of smdebug.core reaches the package smdebug.profiler,
# whose __init__
# imports its metrics readers, and system_metrics_reader.py imports pandas at module level to
# build DataFrames in its read methods. pandas is not ours to drop, and
# importlib.util.LazyLoader does not help on Python 3.11 (the import statement reads the lazy
# module's __spec__, and that loads it). So while smdebug imports, each module in
# DEFERRED_IMPORTS that nobody has imported yet is a stand-in that imports the real one on its
# first attribute read; the stand-in leaves sys.modules right after, so only smdebug's own
# module-level names hold it. bench_rules.py measures the whole job.
DEFERRED_IMPORTS = ("pandas",)


class _DeferredModule(types.ModuleType):
    """Stands in for the module ``name``: the first attribute read imports the real module
    (outside sys.modules' stand-in) and every read is forwarded to it."""

    def __getattr__(self, attr: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_smdebug():
    """``import smdebug.pytorch`` with DEFERRED_IMPORTS deferred; returns the module."""
    stand_ins = {name: _DeferredModule(name) for name in DEFERRED_IMPORTS
                 if name not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        import smdebug.pytorch as smd
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return smd


def set_mode(hook, train: bool) -> None:
    """Switch ``hook`` (may be None) to TRAIN or EVAL mode."""
    if hook is None:
        return
    from smdebug import modes

    hook.set_mode(modes.TRAIN if train else modes.EVAL)
