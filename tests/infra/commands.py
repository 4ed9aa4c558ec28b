"""Is a command line real? Parsed by the installed (pinned) programs themselves, in process, never run."""

from __future__ import annotations

import typer.main
from click.testing import CliRunner

PROGRAMS = ("moe2dense", "prefect", "mlflow")


def assert_real_command(argv: list[str]) -> None:
    """`argv` (`moe2dense …`, `prefect …` or `mlflow …`) is a command its program accepts.

    moe2dense (Typer) and mlflow (Click): parsed with `--help` appended, so an unknown command or option
    fails the parse and a good one prints its help instead of running. prefect (cyclopts): its own
    `parse_args`, which binds without calling (prefect 3.9's CLI object is `prefect.cli._app._app`)."""
    name, *args = argv
    assert name in PROGRAMS, f"no check for {name}"
    if name == "prefect":
        from prefect.cli._app import _app

        _app.parse_args(args, exit_on_error=False, print_error=False)
        return
    if name == "moe2dense":
        from flows.cli import app

        command = typer.main.get_command(app)
    else:
        from mlflow.cli import cli as command
    result = CliRunner().invoke(command, [*args, "--help"])
    assert result.exit_code == 0, f"{' '.join(argv)}: {result.output}"
