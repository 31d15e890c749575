"""rayiqa's imports point down its layers: every module of the package is parsed with `ast` and each
import (at module level and inside functions) must name the module's own layer or a lower one.

Layers, bottom first; a layer of several packages is a set of peers, none of which may import another:
config < io < runtime < data < models < methods < scorers < {pipeline, train, serve, evaluate, report}
< rayiqa (the package's own __init__: the Python API) < cli.
`runtime` sits on `io` (its retry settings name io's StoreUnavailable); nothing in io starts Ray.
A module whose layer is not in the table fails the test, so a new top-level package is placed on purpose.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rayiqa"
ROOT = "rayiqa"  # the layer of the package's __init__ (`import rayiqa`, `from rayiqa import create_scorer`)
LAYERS: list[set[str]] = [
    {"config"}, {"io"}, {"runtime"}, {"data"}, {"models"}, {"methods"}, {"scorers"},
    {"pipeline", "train", "serve", "evaluate", "report"}, {ROOT}, {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """rayiqa/io/fs.py -> rayiqa.io.fs; rayiqa/io/__init__.py -> rayiqa.io."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer a rayiqa module belongs to (its first component below the package), None outside rayiqa."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ROOT


def imported_modules(tree: ast.AST, module: str, is_package: bool, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, module) for every import anywhere in `tree`; relative imports resolved against `module`,
    and `from rayiqa import x` taken as the submodule rayiqa.x when there is one."""
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                folder = package.parent.joinpath(*sub.split("."))
                is_module = folder.is_dir() or folder.with_suffix(".py").is_file()
                found.append((node.lineno, sub if is_module else target))
    return found


def violations(source: str, module: str, is_package: bool = False, package: Path = PACKAGE) -> list[str]:
    """Each import of `source` (the text of `module`) that goes up a layer or sideways to a peer."""
    here = layer_of(module)
    if here not in RANK:
        return [f"{module}: layer {here!r} is not in the layer table"]
    bad = []
    for line, target in imported_modules(ast.parse(source), module, is_package, package):
        there = layer_of(target)
        if there is None or there == here:
            continue
        if there not in RANK:
            bad.append(f"{module}:{line}: imports {target}, whose layer {there!r} is not in the layer table")
        elif RANK[there] >= RANK[here]:
            kind = "sideways" if RANK[there] == RANK[here] else "upward"
            bad.append(f"{module}:{line}: {here} imports {target} ({kind})")
    return bad


def package_violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        bad += violations(path.read_text(), module_name(path, package), path.name == "__init__.py", package)
    return bad


def test_the_package_imports_point_down_only():
    assert list(PACKAGE.rglob("*.py")), f"no modules found under {PACKAGE}"
    bad = package_violations()
    assert not bad, f"{len(bad)} imports break the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, source, expected", [
    # upward, at module level and inside a function
    ("rayiqa.io.fs", "from rayiqa.pipeline import stages\n", ["rayiqa.io.fs:1: io imports rayiqa.pipeline.stages (upward)"]),
    ("rayiqa.data.rows", "def f():\n    import rayiqa.serve.app\n", ["rayiqa.data.rows:2: data imports rayiqa.serve.app (upward)"]),
    # sideways between peers, and through `from rayiqa import <peer>`
    ("rayiqa.train.grmp", "from rayiqa.serve.grmp import X\n", ["rayiqa.train.grmp:1: train imports rayiqa.serve.grmp (sideways)"]),
    ("rayiqa.serve.app", "from rayiqa import pipeline\n", ["rayiqa.serve.app:1: serve imports rayiqa.pipeline (sideways)"]),
    # relative imports are resolved against the module
    ("rayiqa.io.fs", "from ..train import grmp\n", ["rayiqa.io.fs:1: io imports rayiqa.train.grmp (upward)"]),
    # the Python API (the package root) is above the jobs
    ("rayiqa.pipeline.score_job", "from rayiqa import create_scorer\n",
     ["rayiqa.pipeline.score_job:1: pipeline imports rayiqa (upward)"]),
    # a package the table does not place
    ("rayiqa.models.x", "import rayiqa.plugins.y\n",
     ["rayiqa.models.x:1: imports rayiqa.plugins.y, whose layer 'plugins' is not in the layer table"]),
    ("rayiqa.plugins.y", "import os\n", ["rayiqa.plugins.y: layer 'plugins' is not in the layer table"]),
    # allowed: down, within a layer, outside the package
    ("rayiqa.pipeline.stages", "from rayiqa.models import segmenter\nfrom .runtime import x\nimport ray\n", []),
    ("rayiqa.cli", "def main():\n    from rayiqa.serve.app import run_serve\n    import rayiqa\n", []),
    ("rayiqa.runtime", "from rayiqa.io.errors import StoreUnavailable\n", []),
])
def test_the_checker_flags_upward_and_sideways_imports(module, source, expected):
    assert violations(source, module) == expected


def test_the_bottom_modules_import_no_ray_or_torch():
    """rayiqa.runtime starts Ray inside its functions; the reader and the filesystem layer need neither."""
    code = ("import sys, rayiqa.runtime, rayiqa.io.read, rayiqa.io.fs; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
