"""flows/cli.py as a user runs it (a subprocess): recipe errors stop before any flow, schema prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from flows.cli import app; app()", *args]
    env_home = ["--home", str(home)] if args[0] not in ("schema",) else []
    return subprocess.run(
        [*command, *env_home], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


def test_a_recipe_error_names_the_field_and_runs_nothing(tmp_path):
    result = run_cli("convert", "configs/demo.yaml", "plan.num_selected=-1", home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "plan.num_selected" in result.stdout
    assert not (tmp_path / "prefect").exists() or not any((tmp_path / "prefect").rglob("*.db"))
    assert not (tmp_path / "mlflow.db").exists()


def test_schema_is_the_recipes_json_schema(tmp_path):
    result = run_cli("schema", home=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert {"source", "calibration", "plan", "distillation", "evaluation"} <= set(schema["properties"])
