"""`moe2dense convert` on a bad recipe, as a user runs it (a subprocess): the error is printed verbatim,
without a traceback, exit code 2, and nothing of Prefect or MLflow is started or written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.synthetic_stats import qwen3_moe_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def convert(recipe: Path, *overrides: str, home: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from flows.cli import app; app()", "convert", str(recipe), *overrides]
    return subprocess.run(
        [*command, "--home", str(home)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


def assert_refused_before_any_flow(result: subprocess.CompletedProcess, home: Path) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "flow run" not in (result.stdout + result.stderr).lower()
    assert not list(home.rglob("*.db")), "Prefect or MLflow started"
    return " ".join(result.stdout.split())  # unwrapped, whatever the console width


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "name: demo\nsource: {model: ./t}\nplan: {scoring: sf}\n  bad: [/x]\n",
            "line 4, column 3: expected <block end>, but found '<block mapping start>' (while parsing a block mapping "
            "at line 1) bad: [/x] ^",
        ),
        (
            "name: demo\nsource: {model: ./t}\nplan: {scoring: '[bold]x'}\n",
            "plan.scoring: Input should be 'acp', 'cp', 'do_acp', 'ean', 'pp', 'random', 'reap' or 'sf' (got '[bold]x')",
        ),
    ],
)
def test_recipe_errors_are_printed_verbatim(tmp_path: Path, text: str, expected: str) -> None:
    """The message quotes the user's text, which may look like rich markup (`[/x]` crashed the printer)."""
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    printed = assert_refused_before_any_flow(convert(recipe, home=tmp_path / "home"), tmp_path / "home")
    assert str(recipe) in printed and expected in printed


def test_a_plan_the_local_teacher_cannot_run_is_refused_before_any_flow(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps(qwen3_moe_config(num_experts=8, top_k=2)))
    result = convert(
        PROJECT_ROOT / "configs" / "demo.yaml",
        f"source.model={teacher}",
        "plan.num_selected=4",
        home=tmp_path / "home",
    )
    printed = assert_refused_before_any_flow(result, tmp_path / "home")
    assert f"does not fit the teacher {teacher / 'config.json'} (E = 8, top-k = 2)" in printed
    assert (
        "plan.num_selected: grouping 'prune' keeps each expert unmerged, so K must equal k = 2 (got 4)"
        in printed
    )
