"""requirements/deploy.txt is enough for deploy.py: every module deploy.py can reach (function-
level imports included, read with ``ast`` by tests/test_architecture.py) imports only the
standard library, the project's own modules and what that file installs, never torch or the
training and serving stacks."""

from __future__ import annotations

import ast
import re
import sys

from tests.test_architecture import GRAPH, ROOT, TREES

# What requirements/deploy.txt's packages install and deploy.py may import: the SDK brings
# numpy, pyyaml, jsonschema and packaging with it; tomllib is Python's own.
DEPLOY_ONLY = {"sagemaker", "boto3", "botocore", "tqdm", "numpy", "yaml", "jsonschema",
               "packaging"}
# Modules deploy.py reaches that import more, where no deploy.py verb runs that import: the
# decision, module by module (a new one fails the test until it is judged and written here).
OFF_DEPLOY_PATHS = {
    # train.hyperparameters imports it inside parse's failure path, which only the job runs.
    "train.errors": {"sagemaker_training"},
    # In the functions that load and prepare a program, which only serve and train call.
    "contract.precisions": {"torch", "torchao"},
    "serve.precision": {"torch"},
    # gpu_count(), inside Settings.from_env; deploy.py passes the GPU count instead.
    "serve.config": {"pynvml"},
    # The digits recipe (tools.datasets.digits), used by the tests and the demo; data's
    # dogImages and --source paths only copy files.
    "tools.datasets": {"PIL", "sklearn"},
}
PROJECT = {"contract", "train", "serve", "deployment", "tools", "container", "benchmarks",
           "deploy"}


def reachable(start: str) -> set[str]:
    """The project modules ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += GRAPH.get(name, ())
    return seen


def third_party(tree: ast.AST) -> set[str]:
    """The top-level names of the modules a tree imports, outside the project (absolute
    imports only; ``TYPE_CHECKING`` blocks are not skipped, so a type-only import counts)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in PROJECT and n not in sys.stdlib_module_names
            and n != "__future__"}


def test_deploy_py_reaches_only_what_requirements_deploy_txt_installs():
    wanted = {line.split(">")[0].split("<")[0].split("=")[0].strip().lower()
              for line in (ROOT / "requirements" / "deploy.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}
    assert {"sagemaker", "boto3", "tqdm"} <= wanted
    found = {f"{name} imports {package}" for name in reachable("deploy")
             for package in third_party(TREES[name])
             if package not in DEPLOY_ONLY | OFF_DEPLOY_PATHS.get(name, set())}
    assert not found, sorted(found)


def test_the_check_sees_a_function_level_import_of_torch():
    tree = ast.parse("def f():\n    import torch.nn\n    from PIL import Image\n")
    assert third_party(tree) == {"torch", "PIL"}
    assert "serve.config" in reachable("deploy") and re.match(r"deployment\.", "deployment.cli")
