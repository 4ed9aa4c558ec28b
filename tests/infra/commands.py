"""Is a command line real? Checked against the installed (pinned) programs, without running the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import takewhile
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app

BIN = Path(sys.executable).parent


def assert_real_command(argv: list[str]) -> None:
    """`argv` (`moe2dense …`, `prefect …` or `mlflow …`) names a real subcommand and only options it has.

    moe2dense: parsed by its own Typer app with `--help` appended (an unknown command or option fails the
    parse, before the help is printed). prefect / mlflow: the subcommand's `--help` must succeed and list
    every `--option` of argv (prefect's CLI prints help even after an unknown option)."""
    name, *args = argv
    if name == "moe2dense":
        result = CliRunner().invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"{' '.join(argv)}: {result.output}"
        return
    assert name in ("prefect", "mlflow"), f"no check for {name}"
    subcommands = list(takewhile(lambda arg: not arg.startswith("-"), args))
    shown = subprocess.run(
        [str(BIN / name), *subcommands, "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"},
    )
    assert shown.returncode == 0 and "Usage" in shown.stdout, f"{' '.join(argv)}: {shown.stdout}{shown.stderr}"
    for option in (arg.split("=", 1)[0] for arg in args if arg.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", shown.stdout), f"{' '.join(argv)}: no {option}"
