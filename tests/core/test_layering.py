"""The core library never imports the orchestration stack (DESIGN.md "Layers"): prefect, mlflow, boto3.

Two checks:
- statically, no `import` statement anywhere in moe2dense_core (module level or inside a function)
  names one of them;
- at run time, in a fresh interpreter that imports moe2dense_core, every submodule and every public
  name, an import hook records who imports what: prefect and mlflow must not be loaded at all, and no
  moe2dense_core module may be the importer of boto3/botocore. (When the orchestration extra is
  installed, `accelerate` — which transformers loads — probes boto3 for its SageMaker config; that
  third-party import exists with or without moe2dense_core and creates no dependency of the core.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import moe2dense_core

ORCHESTRATION = ("prefect", "mlflow", "boto3", "botocore")
NEVER_LOADED = ("prefect", "mlflow")

PROBE = f"""
import importlib, json, pkgutil, sys

FORBIDDEN = {ORCHESTRATION!r}
importers = []


class RecordImporter:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            frame = sys._getframe(1)
            while frame is not None and (
                frame.f_code.co_filename.startswith("<frozen") or frame.f_globals.get("__name__") == __name__
            ):
                frame = frame.f_back
            importers.append([name, frame.f_globals.get("__name__", "?") if frame else "?"])
        return None


sys.meta_path.insert(0, RecordImporter())
import moe2dense_core
imported = []
for module in pkgutil.walk_packages(moe2dense_core.__path__, prefix="moe2dense_core."):
    importlib.import_module(module.name)
    imported.append(module.name)
for name in moe2dense_core.__all__:
    getattr(moe2dense_core, name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(FORBIDDEN))
print(json.dumps({{"imported": imported, "loaded": loaded, "importers": importers}}))
"""


def test_no_core_source_file_imports_the_orchestration_stack():
    root = Path(moe2dense_core.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(root)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in ORCHESTRATION
            ]
    assert offenders == []


def test_importing_every_core_module_loads_no_orchestration_package():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "moe2dense_core.assembly.checkpoint" in report["imported"]
    assert not set(report["loaded"]) & set(NEVER_LOADED), report["importers"]
    core_importers = [pair for pair in report["importers"] if pair[1].startswith("moe2dense_core")]
    assert core_importers == []
