"""The project's layout, read from its source with ``ast`` (no import, no model): the packages'
import graph has no circle and runs one way (contract at the bottom; train and serve on it and
never on each other; tools, then deployment and deploy.py, and the benchmarks above), and no
module or class grows past its size or reaches into torch's private attributes."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "train", "serve", "deployment", "tools", "container", "benchmarks")
# container/'s programs run with their own folder on sys.path (`import gpu_hosts`).
SCRIPT_FOLDERS = ("container",)
MAX_CLASS_LINES = 300
MAX_LOOP_LINES = 400
# Who may import whom, by package: a package missing from a row imports none of the project.
ALLOWED = {
    "contract": {"contract"},
    "train": {"contract", "train"},
    "serve": {"contract", "serve"},
    "container": {"container", "train", "serve"},
    # The workstation's floors (docs/architecture.md): tools never imports deployment.
    "tools": {"contract", "train", "serve", "tools"},
    "deployment": {"contract", "train", "serve", "container", "tools", "deployment"},
    "benchmarks": {"contract", "train", "serve", "container", "tools", "benchmarks"},
    "deploy": {"deployment"},
}


def _files() -> dict[str, Path]:
    """Project module name -> file, for every Python file of the packages and deploy.py, and
    container/'s entry programs (Python files without the suffix)."""
    files = {"deploy": ROOT / "deploy.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.is_dir() or "test_dir" in path.parts or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py" or (path.suffix == "" and path.read_bytes()[:40].startswith(
                    b"#!/usr/bin/env python")):
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                files[".".join(parts)] = path
    return files


FILES = _files()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in FILES.items()}


def _resolve(importer: str, module: str, names: list[str]) -> set[str]:
    """The project modules an import in ``importer`` names: ``from a import b`` is ``a.b``
    when that is a module, else ``a``; container/'s programs find their siblings by name."""
    package = importer.split(".")[0]
    candidates = [module]
    if package in SCRIPT_FOLDERS:
        candidates.append(f"{package}.{module}")
    found = set()
    for base in candidates:
        if base not in FILES:
            continue
        subs = {f"{base}.{n}" for n in names if f"{base}.{n}" in FILES}
        found |= subs or {base}
        if len(subs) < len(names):
            found.add(base)
        break
    return found


def imports(name: str) -> set[str]:
    """The project modules module ``name`` imports, function-level imports included."""
    out = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out |= _resolve(name, alias.name, [])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= _resolve(name, node.module, [a.name for a in node.names])
    out.discard(name)
    return out


GRAPH = {name: imports(name) for name in FILES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reads_function_level_and_package_imports():
    assert "deployment.settings" in GRAPH["deployment.cli"]
    assert "contract.preprocess" in GRAPH["serve.decode"]
    assert "container.gpu_hosts" in GRAPH["container.gpu_check"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other_in_any_circle():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_floors_below_it(package):
    wrong = {f"{name} imports {target}"
             for name, targets in GRAPH.items() if name.split(".")[0] == package
             for target in targets if target.split(".")[0] not in ALLOWED[package]}
    assert not wrong, sorted(wrong)


def test_train_loop_stays_a_loop():
    lines = len((ROOT / "train" / "loop.py").read_text().splitlines())
    assert lines < MAX_LOOP_LINES, f"train/loop.py has {lines} lines"


def test_no_class_over_300_lines():
    sources = dict(FILES, **{str(p): p for p in (ROOT / "tests").rglob("*.py")})
    big = []
    for name, path in sources.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    big.append(f"{name}.{node.name}: {length} lines")
    assert not big


# torch's private attributes that code reaches for through objects of its own (a scheduler's
# last learning rate, the BatchNorm base class), which no import shows.
PRIVATE_TORCH_ATTRIBUTES = {"_last_lr", "_step_count", "_BatchNorm", "_NormBase", "_inductor",
                            "_dynamo", "_C"}
# The one reach torch leaves no public way around, with why: AOTInductor's compile and load
# functions (aoti_compile_and_package, aoti_load_package), which PyTorch's AOTInductor guide
# documents as its API and which live in torch._inductor only (serve/compiled.py says why serve
# compiles with AOTInductor).
ALLOWED_PRIVATE = {"serve.compiled": ["from torch._inductor import ..."]}
_PRIVATE = re.compile(r"(^|\.)_[A-Za-z]")


def _torch_aliases(tree: ast.AST) -> set[str]:
    """Names a module binds to torch or one of its submodules (``torch``, ``nn``, ``dist``)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    aliases.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            aliases |= {alias.asname or alias.name for alias in node.names}
    return aliases


def private_torch_uses(tree: ast.AST) -> list[str]:
    """Where a module reaches into torch's private names: imports of a private torch module,
    ``importlib.import_module`` of one, attribute chains from a torch name through a private
    component, and the private attributes above on any object."""
    aliases = _torch_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.startswith("torch.") and _PRIVATE.search(a.name)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            if _PRIVATE.search(node.module) or any(a.name.startswith("_") for a in node.names):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("torch") and \
                    _PRIVATE.search(str(arg.value)):
                found.append(f"import_module({arg.value!r})")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if node.attr in PRIVATE_TORCH_ATTRIBUTES or (
                    isinstance(root, ast.Name) and root.id in aliases):
                found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_the_private_torch_check_sees_each_kind_of_reach():
    code = ("import importlib, torch\nfrom torch import nn\nimport torch._inductor.config\n"
            "importlib.import_module('torch.ao.quantization.fx._decomposed')\n"
            "nn.modules.batchnorm._BatchNorm\nscheduler._last_lr = []\ntorch.nn.Linear\n")
    assert len(private_torch_uses(ast.parse(code))) == 4


def test_no_module_reaches_into_torch_private_attributes():
    found = {name: uses for name, tree in TREES.items()
             if (uses := private_torch_uses(tree)) != ALLOWED_PRIVATE.get(name, [])}
    assert not found


def test_container_holds_what_the_image_runs_and_the_local_test_shell_scripts():
    """The workstation's Python programs (the demo, the metrics page) live in tools/."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in (ROOT / "container").glob("*.py"):
        assert f"container/{path.name}" in dockerfile, f"{path} is not in the image"
    local_test = {p.name for p in (ROOT / "container" / "local_test").iterdir()
                  if p.is_file() and not p.name.startswith(".")}
    assert local_test and all(name.endswith(".sh") for name in local_test), local_test


def test_tests_mirror_the_packages():
    """One test folder per package, and tests/helpers/ for what the folders share (the tiers'
    plugin, the HTTP helpers): helpers live there or in a conftest, never in a test module."""
    folders = {p.name for p in (ROOT / "tests").iterdir()
               if p.is_dir() and (p / "__init__.py").is_file()} - {"helpers"}
    assert folders <= set(PACKAGES), folders - set(PACKAGES)
    assert not list((ROOT / "tests" / "helpers").glob("test_*.py"))
    for module in (ROOT / "tests").rglob("test_*.py"):
        imported = re.findall(r"^\s*from (tests\.\S+) import", module.read_text(), re.M)
        helpers = [name for name in imported if name.rsplit(".", 1)[-1].startswith("test_")]
        assert not helpers, f"{module.relative_to(ROOT)} imports helpers from test modules: {helpers}"
    assert {"contract", "train", "serve", "deployment", "tools", "container"} <= folders


def test_the_image_installs_and_copies_every_package_it_runs():
    """pyproject's packages, the Dockerfile's COPY lines and .dockerignore's exceptions agree:
    a package or program the image runs but does not get fails the build or the job."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    admitted = [line[1:].removesuffix("/**") for line in
                (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for package in ALLOWED["container"] - {"container"} | {"contract"}:
        assert f'"{package}"' in pyproject and f"COPY {package} " in dockerfile, package
    sources = re.findall(r"^COPY ((?:[^\n\\]|\\\n)+)", dockerfile, re.M)
    for line in sources:
        for source in line.replace("\\\n", " ").split()[:-1]:
            assert any(source == a or source.startswith(a + "/") for a in admitted), source


# ------------------------------------------------------------------ deploy.py alone
# requirements/deploy.txt is enough for deploy.py: every module deploy.py can reach (function-
# level imports included) imports only the standard library, the project's own modules and what
# that file installs, never torch or the training and serving stacks.
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
