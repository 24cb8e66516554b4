"""An /opt/ml tree on a workstation, laid out as SageMaker lays it out before `train` starts.

Used by the demo, the local smoke-test scripts and the tests, so that host runs go through the
same entry program and the same toolkit code as a training job (AWS doc: "How Amazon SageMaker
Provides Training Information": input/config/*.json, input/data/<channel>/).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def write_job(base: Path, channels: dict[str, Path], hyperparameters: dict,
              hosts: tuple[str, ...] = ("localhost",), copy: bool = False) -> Path:
    """Create ``base/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json`` (every
    hyperparameter a string, as SageMaker writes them; booleans as ``true``/``false``), one
    symlink per channel under ``base/input/data/`` (a copy with ``copy=True``, for a tree that is
    mounted into a container, where host symlinks would dangle), and ``base/output``.
    Returns ``base``."""
    base = Path(base)
    config = base / "input" / "config"
    data = base / "input" / "data"
    config.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    (base / "output").mkdir(parents=True, exist_ok=True)
    for name, src in channels.items():
        link = data / name
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        if copy:
            shutil.copytree(src, link)
        else:
            link.symlink_to(Path(src).resolve(), target_is_directory=True)
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
               "RecordWrapperType": "None"} for name in channels}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": hosts[0], "hosts": list(hosts)}))
    (config / "hyperparameters.json").write_text(json.dumps({
        k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in hyperparameters.items()
    }))
    return base


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.opt_ml BASE DATA [--copy] [--digits-recipe] [key=value ...]``: lay out
    BASE for the channels under DATA (train, valid, test) with the given hyperparameters (after
    the digits recipe's, with --digits-recipe); --copy copies the channels instead of linking
    them (for a tree mounted into a container). Prints BASE."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.opt_ml", description=main.__doc__)
    parser.add_argument("base", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("pairs", nargs="*", metavar="key=value")
    parser.add_argument("--copy", action="store_true")
    parser.add_argument("--digits-recipe", action="store_true")
    args = parser.parse_intermixed_args(argv)
    hyperparameters: dict = {}
    if args.digits_recipe:
        from tools.datasets import DIGITS_RECIPE

        hyperparameters.update(DIGITS_RECIPE)
    for pair in args.pairs:
        if "=" not in pair:
            parser.error(f"{pair!r} is not key=value")
        key, value = pair.split("=", 1)
        hyperparameters[key] = value
    channels = {c: args.data / c for c in ("train", "valid", "test") if (args.data / c).is_dir()}
    print(write_job(args.base, channels, hyperparameters, copy=args.copy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
