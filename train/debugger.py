"""The SageMaker Debugger (smdebug) hook, created only when the job is configured for it.

SageMaker writes ``/opt/ml/input/config/debughookconfig.json`` when the job has a
DebugHookConfig (AWS doc: "Configure the Debugger hook to save tensors"); outside SageMaker the
path can be given in ``SMDEBUG_CONFIG_FILE_PATH``. No file: no hook, and no smdebug import.

smdebug 1.0.34 calls ``ndarray.tostring``, which numpy 2 removed; with only the default
collections the error is swallowed and nothing is written (DESIGN.md). We pin numpy < 2, and
refuse to run a hook under numpy 2 rather than save nothing in silence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from train.errors import TrainingError

logger = logging.getLogger(__name__)

CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"


def config_path(input_config_dir: str) -> Path | None:
    """The hook config file to use, or None when the job has none."""
    candidates = [os.environ.get(CONFIG_ENV), os.path.join(input_config_dir, "debughookconfig.json")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# What the in-container rules (train/rules.py) need when the job has no hook config of its own:
# the loss at every step, weights and gradients at the first step and every RULES_INTERVAL
# steps. Writing resnet50's weights and gradients costs about 200 MB a save, hence the interval.
RULES_INTERVAL = 100


def create_hook(input_config_dir: str, model, loss_fn, rules_dir: str | None = None):
    """An smdebug hook with ``model`` and ``loss_fn`` registered, or None.

    From the job's config when there is one (SageMaker Debugger); else, when ``rules_dir`` is
    given, a local hook writing what the in-container rules read to ``rules_dir``; else None.

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
    import smdebug.pytorch as smd

    if path is not None:
        try:
            hook = smd.Hook.create_from_json_file(str(path))
        except Exception as exc:  # smdebug raises plain exceptions for a bad config
            raise TrainingError(f"invalid debugger hook config {path}: {exc}") from exc
        logger.info("smdebug hook from %s writing to %s", path, hook.out_dir)
    else:
        hook = smd.Hook(out_dir=rules_dir, include_collections=["losses", "weights", "gradients"],
                        save_config=smd.SaveConfig(save_interval=RULES_INTERVAL,
                                                   save_steps=[0]))
        hook.get_collection("losses").save_config = smd.SaveConfig(save_interval=1)
        logger.info("smdebug hook for the in-container rules writing to %s", rules_dir)
    hook.register_module(model)
    hook.register_loss(loss_fn)
    return hook


def set_mode(hook, train: bool) -> None:
    """Switch ``hook`` (may be None) to TRAIN or EVAL mode."""
    if hook is None:
        return
    from smdebug import modes

    hook.set_mode(modes.TRAIN if train else modes.EVAL)
