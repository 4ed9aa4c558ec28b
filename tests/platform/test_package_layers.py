"""Layers above the core (DESIGN.md "Layers"): flows → tasks → moe2dense_platform → moe2dense_core.

- statically, no module of moe2dense_platform imports tasks or flows, and no module of tasks imports flows
  (every `import` statement, at module level or inside a function);
- at run time, a fresh interpreter that imports the recipe schema (recipe, recipe_io, recipe_teacher,
  corpus, field_errors) loads no Prefect and no MLflow: a recipe can be validated where neither is installed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE_SCHEMA = ("recipe", "recipe_io", "recipe_teacher", "corpus", "field_errors")


def _imported_packages(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("moe2dense_platform", {"tasks", "flows"}), ("tasks", {"flows"})],
)
def test_a_package_never_imports_a_layer_above_it(package, forbidden):
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for line, name in _imported_packages(path)
        if name in forbidden
    ]
    assert offenders == []


def test_the_recipe_schema_loads_no_orchestration_package():
    probe = (
        "import importlib, json, sys\n"
        f"for name in {RECIPE_SCHEMA!r}: importlib.import_module('moe2dense_platform.' + name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'boto3'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
