"""``compile``: build a model's compiled programs for the host this runs on, and put them in the
model (``compiled/<key>/``), so that a server on a host of the same kind loads them and compiles
nothing (serve/model.py, ``warm_up``).

The role SageMaker Neo's compilation jobs played for its own runtimes: run it on the instance
type the endpoint will use (``deploy.py compile --instance-type ml.c7i.xlarge`` runs it as a
SageMaker Processing job there; ``docker run IMAGE compile`` or ``container/compile`` on such a
host). Packages are keyed by the program, the precision, torch and torchao, and the CPU's flags or
the GPU, as the server's store is (serve/compiled.py): a server on another kind of host finds no
key of its own and compiles as usual, beside its workers. Running it again on another kind adds
that kind's packages; the model's other files are untouched.

Packages are built in, or taken from, the host's compile store (SERVE_COMPILE_CACHE_DIR, as a
server here would). The precision and batch sizes are the server's for this host and these
variables
(SERVE_PRECISION, SERVE_PRECISION_TOLERANCE, SAGEMAKER_MODEL_SERVER_MAX_BATCH_SIZE): pass the
endpoint's values.

    compile [--input PATH] [--output DIR]

``--input``: a model.tar.gz, a folder holding one, or a model dir (then compiled in place);
default /opt/ml/processing/input/model (a Processing job's input). ``--output``: the folder the
new model.tar.gz goes to; default /opt/ml/processing/output. Exit status 0, or 1 with one line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tarfile
import tempfile
from pathlib import Path

PROCESSING_INPUT = Path("/opt/ml/processing/input/model")
PROCESSING_OUTPUT = Path("/opt/ml/processing/output")
RESOURCE_CONFIG = Path("/opt/ml/config/resourceconfig.json")  # a Processing job's instance type
ARCHIVE = "model.tar.gz"


class CompileStepError(RuntimeError):
    """The step cannot compile this model here (the message, one line, says why)."""


def _archive_in(path: Path) -> Path | None:
    if path.is_file():
        return path
    if (path / ARCHIVE).is_file():
        return path / ARCHIVE
    return None


def _instance_type() -> str | None:
    try:
        return json.loads(RESOURCE_CONFIG.read_text()).get("current_instance_type")
    except (OSError, ValueError, AttributeError):
        return os.environ.get("SAGEMAKER_INSTANCE_TYPE")


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def compile_model(model_dir: Path, store: Path, environ: dict | None = None) -> dict:
    """Compile ``model_dir``'s programs for this host, as its server would choose them, into
    ``model_dir / compiled / <key>``. Returns what was built (the ``about.json`` written there).

    Raises:
        CompileStepError: the server would not compile here (SERVE_COMPILE=off, no C++
            compiler), or a compile failed.
        contract.artifact.ArtifactError: the model is missing or invalid.
    """
    import torch

    from serve import compiled
    from serve.config import Settings
    from serve.lifecycle import choose_precision
    from serve.model import Classifier

    env = dict(os.environ if environ is None else environ, SM_MODEL_DIR=str(model_dir))
    settings = Settings.from_env(env)
    device = torch.device("cuda:0" if settings.gpus else "cpu")
    choice = choose_precision(settings, device)
    if not choice.compile:
        raise CompileStepError(f"the server would not compile on this host ({choice.reason}): "
                               "nothing to ship")
    classifier = Classifier(model_dir, device, choice)
    try:
        classifier.warm_up(settings.max_batch_size, store, compile_here=True)
    except compiled.CompileUnavailable as exc:
        raise CompileStepError(f"the compile failed: {exc}") from exc
    about = {"precision": choice.precision, "batch_sizes": classifier.sizes,
             "host": compiled.host_id(device, _host_flags(device)), "device": _device_name(device),
             "instance_type": _instance_type(), "torch": torch.__version__,
             "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "reason": choice.reason}
    target = classifier.entry.ship(model_dir, classifier.sizes, about)
    about["folder"] = str(target.relative_to(model_dir))
    return about


def _host_flags(device) -> frozenset:
    from serve.precision import Host

    return Host.detect(device.type).cpu_flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compile", description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=PROCESSING_INPUT)
    parser.add_argument("--output", type=Path, default=PROCESSING_OUTPUT)
    args = parser.parse_args(argv)
    from contract.artifact import ArtifactError
    from serve.settings_table import compile_cache_dir

    with tempfile.TemporaryDirectory(prefix="compile-") as work:
        work = Path(work)
        archive = _archive_in(args.input)
        if archive is None and not (args.input / "manifest.json").is_file():
            print(f"compile: no {ARCHIVE} and no manifest.json in {args.input}", file=sys.stderr)
            return 1
        model_dir = args.input
        if archive is not None:
            model_dir = work / "model"
            with tarfile.open(archive) as tar:
                tar.extractall(model_dir, filter="data")  # no absolute paths, links out, devices
        try:
            # The host's store (SERVE_COMPILE_CACHE_DIR): what a server here compiled already is
            # shipped as it is, and what this step compiles serves this host too.
            about = compile_model(model_dir, Path(compile_cache_dir()))
        except (CompileStepError, ArtifactError) as exc:
            print(f"compile: {exc}", file=sys.stderr)
            return 1
        if archive is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            out = args.output / ARCHIVE
            with tarfile.open(out, "w:gz") as tar:
                for item in sorted(model_dir.iterdir()):
                    tar.add(item, arcname=item.name)
        else:
            out = model_dir
    print(f"compile: {about['precision']} batch sizes {about['batch_sizes']} for "
          f"{about['device']} ({about['instance_type'] or 'this host'}) in {about['folder']}; "
          f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
