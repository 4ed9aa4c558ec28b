"""`moe2dense` (the installed command, `flows.cli:main`) on a failure the project knows — here an MLflow
server that is not there: the command ends with one line naming the problem, exit code 1, and no Python
traceback of its own (Prefect's log of the failed flow run, above it, keeps its traceback)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.recipe_io import recipe_to_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_known_failure_prints_one_line_and_exits_1(tiny_teacher, prefect_server, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_to_yaml(tiny_teacher.recipe("distillation.enabled=false")))
    tracking_uri = f"http://127.0.0.1:{closed_port()}"
    env = isolated_environment(
        MOE2DENSE_HOME=str(tmp_path / "home"),
        MOE2DENSE_PREFECT_API_URL=prefect_server,
        MOE2DENSE_MLFLOW_TRACKING_URI=tracking_uri,
    )
    done = subprocess.run(
        [sys.executable, "-c", "from flows.cli import main; main()", "convert", str(recipe)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: ") and tracking_uri in last, done.stderr[-3000:]
    assert "Traceback (most recent call last)" not in done.stderr.split("Finished in state Failed")[-1]
