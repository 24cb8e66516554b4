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
    """``python -m train.local BASE DATA [key=value ...]``: lay out BASE for the channels under
    DATA (train, valid, test) with the given hyperparameters."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    base, data, pairs = Path(args[0]), Path(args[1]), args[2:]
    channels = {c: data / c for c in ("train", "valid", "test") if (data / c).is_dir()}
    hyperparameters = dict(p.split("=", 1) for p in pairs)
    print(write_job(base, channels, hyperparameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
