"""`moe2dense`: the command line (Typer). Every command reads the settings (environment / settings file)
BEFORE Prefect is imported, because Prefect reads its own settings at import time.

    moe2dense demo                       teacher (trained or reused) → convert → distill → evaluate, no servers
    moe2dense convert RECIPE [a.b=v ...] one conversion from a YAML recipe with dotted overrides
    moe2dense sweep RECIPE --scorer ... --k ... --grouping ... --scaling ... [a.b=v ...]
    moe2dense compare RECIPE [a.b=v ...] converted students against the baselines on one distillation budget
    moe2dense study [--scale N] [--quick] the paper's study in miniature: teachers → grid → comparison
    moe2dense teacher [--steps N] [--dense] [--text FILE ...]
    moe2dense watch [WATCH_FILE] [--dry-run]
    moe2dense deploy [--work-pool P] [--gpu-pool G] [--gpu-pool-type process|docker|kubernetes]
                     [--image I] [--recipe R [--override a.b=v ...]] [--watch-cron CRON] [--watch-config WATCH_FILE]
    moe2dense worker [--pool P]          a process worker on the Prefect server the settings name
    moe2dense stack up|status|down       Prefect + MLflow (+ S3) servers and a worker as local processes
    moe2dense ui                         Prefect server + MLflow UI over the local stores
    moe2dense report [RUN_ID]            recent conversions, or one run's numbers and report
    moe2dense reconcile-runs [--experiment E ...]   end KILLED the MLflow runs of killed processes
    moe2dense schema [--comparison]      the recipe's (or the comparison recipe's) JSON schema
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from typer.core import TyperCommand

from moe2dense_core.errors import Moe2DenseError

if TYPE_CHECKING:
    import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = PROJECT_ROOT / "configs" / "demo.yaml"

app = typer.Typer(
    help="Convert Mixture-of-Experts LMs into dense ones (arXiv 2605.28207).", no_args_is_help=True
)
console = Console()


def main() -> None:
    """The `moe2dense` command. A known failure (a Moe2DenseError: bad input, an unreachable server, a
    refused checkpoint, …) prints its one message and exits 1; anything else keeps its full traceback."""
    try:
        app()
    except Moe2DenseError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


HomeOption = Annotated[
    Path | None, typer.Option("--home", help="Local state folder of the embedded default (MOE2DENSE_HOME).")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. plan.num_selected=8.")]


def configure(home: Path | None):
    """Settings from env / settings file (with --home), applied to the environment before Prefect loads."""
    if home is not None:
        os.environ["MOE2DENSE_HOME"] = str(home)
    from moe2dense_platform.settings import Settings

    settings = Settings()
    settings.apply_environment()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def load_recipe_or_exit(path: Path, overrides: list[str] | None):
    """The validated recipe (checked against a local teacher's config.json too), or the field-path
    errors and exit code 2 — before any flow or task runs. Printed verbatim (no rich markup: the
    message quotes the user's own text)."""
    from moe2dense_platform.recipe import RecipeError
    from moe2dense_platform.recipe_io import load_recipe
    from moe2dense_platform.recipe_teacher import check_recipe_fits_teacher

    try:
        recipe = load_recipe(path, overrides or [])
        check_recipe_fits_teacher(recipe, origin=str(path))
        return recipe
    except (RecipeError, FileNotFoundError) as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def load_compare_recipe_or_exit(path: Path, overrides: list[str] | None):
    """The validated comparison recipe (each converted student's plan checked against a local teacher's
    config.json), or the field-path errors and exit code 2, as `load_recipe_or_exit`."""
    from moe2dense_platform.compare_recipe import check_compare_fits_teacher, load_compare_recipe
    from moe2dense_platform.recipe import RecipeError

    try:
        recipe = load_compare_recipe(path, overrides or [])
        check_compare_fits_teacher(recipe, origin=str(path))
        return recipe
    except (RecipeError, FileNotFoundError) as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextmanager
def finished_task_runs(on_finished: Callable[[str], None]) -> Iterator[None]:
    """Call on_finished(task run name) for each finished stage run (the structured `moe2dense.stages`
    records of tasks/stage_events.py; Completed, Cached or Failed)."""
    from tasks.stage_events import STAGE_LOGGER

    class FinishedTaskRuns(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            on_finished(record.task_run_name)

    handler = FinishedTaskRuns()
    STAGE_LOGGER.addHandler(handler)
    try:
        yield
    finally:
        STAGE_LOGGER.removeHandler(handler)


@contextmanager
def stage_progress(description: str, total: int) -> Iterator[None]:
    """Progress over a flow's `total` stages, advanced by each finished stage run (tasks/stage_events.py).

    On a terminal: a rich bar over the stages plus a bar of steps for each long stage that reports
    them (moe2dense_platform.progress). Otherwise (CI logs, pipes, where rich would draw only at the end): one plain
    line per finished stage, `converting: 3/10 stages done (plan-0a1), elapsed 0:01:05`; the long
    stages log their own throttled step lines (stage, step/total, tokens/s, ETA) through Prefect's
    task-run logger (moe2dense_platform.progress)."""
    if not console.is_terminal:
        started, done = time.monotonic(), [0]

        def print_line(name: str) -> None:
            done[0] += 1
            elapsed = timedelta(seconds=round(time.monotonic() - started))
            print(f"{description}: {done[0]}/{total} stages done ({name}), elapsed {elapsed}", flush=True)

        with finished_task_runs(print_line):
            yield
        return
    from moe2dense_platform.progress import PROGRESS_LOGGER

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task(description, total=total)

    class StageSteps(logging.Handler):
        """One bar per long stage, from the steps tasks report on `moe2dense.progress`."""

        bars: dict[str, TaskID] = {}

        def emit(self, record: logging.LogRecord) -> None:
            stage, step, total = record.stage, record.step, record.total
            if stage not in self.bars:
                self.bars[stage] = progress.add_task(f"  {stage} steps", total=total)
            progress.update(self.bars[stage], completed=step, total=total)

    def advance(name: str) -> None:
        progress.update(bar, advance=1, description=f"{description}: {name} done")

    steps = StageSteps()
    PROGRESS_LOGGER.addHandler(steps)
    try:
        with finished_task_runs(advance), progress:
            yield
    finally:
        PROGRESS_LOGGER.removeHandler(steps)


def print_where(settings, result) -> None:
    table = Table(title=f"moe2dense: {result.recipe_name}", show_header=True)
    table.add_column("model")
    table.add_column("held-out perplexity", justify="right")
    table.add_column("mean accuracy", justify="right")
    for evaluation in result.evaluations:
        acc = "" if evaluation.downstream_mean_acc is None else f"{evaluation.downstream_mean_acc:.4f}"
        table.add_row(evaluation.label, f"{evaluation.perplexity:.2f}", acc)
    console.print(table)
    console.print(f"dense model:       {result.final.checkpoint_uri}")
    console.print(f"report:            {result.report_uri}/index.html")
    console.print(
        f"MLflow parent run: {result.mlflow_run_id} on {settings.describe()['mlflow_tracking_uri']}"
    )
    if result.registered_model:
        console.print(f"registered model:  {result.registered_model}")
    console.print("browse lineage and runs: [bold]moe2dense ui[/bold]")


@app.command()
def demo(
    home: HomeOption = None,
    steps: Annotated[
        int | None, typer.Option(help="Teacher training steps (default: the demo budget).")
    ] = None,
) -> None:
    """The main job with no servers: train (or reuse) a small MoE teacher on text that ships with Python,
    convert it to a dense model, distill, evaluate, and print where everything is."""
    settings = configure(home)
    from flows.convert import convert_flow, planned_stages
    from flows.teacher import TeacherRecipe, teacher_flow
    from flows.teacher import planned_stages as teacher_stages
    from moe2dense_core.teacher import TeacherModelConfig

    model = TeacherModelConfig() if steps is None else TeacherModelConfig(steps=steps)
    teacher_recipe = TeacherRecipe(model=model, output_dir=settings.home / "teachers")
    with stage_progress("teacher", len(teacher_stages(teacher_recipe))):
        teacher = teacher_flow(teacher_recipe)
    recipe = load_recipe_or_exit(DEMO_RECIPE, [f"source.model={teacher.moe.path}"])
    with stage_progress("converting", len(planned_stages(recipe))):
        result = convert_flow(recipe)
    print_where(settings, result)


@app.command()
def convert(recipe: Path, overrides: Overrides = None, home: HomeOption = None) -> None:
    """Convert the MoE a YAML recipe names (validated before anything runs)."""
    settings = configure(home)
    parsed = load_recipe_or_exit(recipe, overrides)
    from flows.convert import convert_flow, planned_stages

    with stage_progress("converting", len(planned_stages(parsed))):
        result = convert_flow(parsed)
    print_where(settings, result)


class MethodNamesHelp(TyperCommand):
    """A command whose option help names the registered methods: `{scorers}`, `{compared_scorers}`,
    `{groupers}` and `{scalings}` are filled in from the registries when the help is shown (they
    import torch, which the CLI does not load to start)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from moe2dense_core.grouping import grouper_names
        from moe2dense_core.scaling import scaling_names
        from moe2dense_core.scoring import compared_scorers, scorer_names

        names = {
            "{scorers}": scorer_names(),
            "{compared_scorers}": compared_scorers(),
            "{groupers}": grouper_names(),
            "{scalings}": scaling_names(),
        }
        for param in self.params:
            for placeholder, known in names.items():
                if isinstance(param.help, str):
                    param.help = param.help.replace(placeholder, ", ".join(known))
        super().format_help(ctx, formatter)


@app.command(cls=MethodNamesHelp)
def sweep(
    recipe: Path,
    overrides: Overrides = None,
    scorer: Annotated[
        list[str] | None,
        typer.Option(help="Scorers (repeat): {scorers}; default: all but the controls: {compared_scorers}."),
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Kept experts K (repeat); default: the teacher's k.")
    ] = None,
    grouping: Annotated[
        list[str] | None,
        typer.Option(help="Groupers (repeat): {groupers}; default: the recipe's plan.grouping."),
    ] = None,
    scaling: Annotated[
        list[str] | None,
        typer.Option(help="Scalings (repeat): {scalings}; default: the recipe's plan.scaling."),
    ] = None,
    distill_best: Annotated[int, typer.Option(help="Distill and evaluate the N best.")] = 1,
    home: HomeOption = None,
) -> None:
    """Sweep scorers × K × groupers × scalings from one calibration; distill the best N."""
    configure(home)
    parsed = load_recipe_or_exit(recipe, overrides)
    from flows.sweep import SweepGrid, SweepRecipe, sweep_flow

    grid = {"scorers": scorer, "num_selected": k, "groupings": grouping, "scalings": scaling}
    sweep_recipe = SweepRecipe(
        recipe=parsed, grid=SweepGrid(**{n: v for n, v in grid.items() if v}), distill_best=distill_best
    )
    result = sweep_flow(sweep_recipe)
    console.print(f"{len(result.entries)} configurations; MLflow run {result.mlflow_run_id}")


@app.command()
def compare(recipe: Path, overrides: Overrides = None, home: HomeOption = None) -> None:
    """Distill converted students and the baselines (d2d, random init, random FFN) on one budget per seed,
    and compare them (validated before anything runs; refused before training unless sizes match)."""
    settings = configure(home)
    parsed = load_compare_recipe_or_exit(recipe, overrides)
    from flows.compare import compare_flow, planned_stages
    from moe2dense_platform.comparison import summary_rows, table_markdown

    with stage_progress("comparing", len(planned_stages(parsed))):
        result = compare_flow(parsed)
    console.print(table_markdown(summary_rows(result.comparison)), markup=False, highlight=False)
    console.print(f"comparison (table, plots): {result.comparison_uri}", soft_wrap=True, markup=False)
    console.print(
        f"MLflow parent run: {result.mlflow_run_id} on {settings.describe()['mlflow_tracking_uri']}",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def study(
    overrides: Overrides = None,
    scale: Annotated[
        int, typer.Option(help="N x larger: widths x round(sqrt(N)), tokens per step x N (one GPU: 10).")
    ] = 1,
    quick: Annotated[
        bool, typer.Option(help="The seconds-long smoke version (configs/study/quick.yaml).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="Study config (default: configs/study/cpu.yaml).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <home>/study/<name>).")] = None,
    home: HomeOption = None,
) -> None:
    """The paper's study in miniature: teachers, the grid, the comparison; tables and plots for docs/results.md."""
    settings = configure(home)
    from flows.study_config import STUDY_CONFIGS, load_study_config
    from moe2dense_platform.recipe import RecipeError

    path = config or STUDY_CONFIGS / ("quick.yaml" if quick else "cpu.yaml")
    try:
        parsed = load_study_config(path, overrides or []).scaled(scale)
    except (RecipeError, FileNotFoundError) as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    from flows.study import study_flow

    result = study_flow(parsed, out or settings.home / "study" / parsed.name)
    console.print(
        f"results (study.json, tables.md, plots): {result.results_dir}", soft_wrap=True, markup=False
    )
    console.print(f"seconds per phase: {result.seconds}", soft_wrap=True, markup=False)
    console.print(f"MLflow parent run: {result.mlflow_run_id}", soft_wrap=True, markup=False)


@app.command()
def teacher(
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    dense: Annotated[bool, typer.Option(help="Also train the equal-size dense teacher.")] = False,
    text: Annotated[
        list[Path] | None, typer.Option(help="Local text files instead of the builtin corpus.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Train (or reuse) the small MoE teacher, and optionally the dense one."""
    settings = configure(home)
    from flows.teacher import TeacherRecipe, planned_stages, teacher_flow
    from moe2dense_core.teacher import TeacherModelConfig
    from moe2dense_platform.corpus import CorpusSpec

    corpus = CorpusSpec(source="files", paths=tuple(text)) if text else CorpusSpec()
    model = TeacherModelConfig() if steps is None else TeacherModelConfig(steps=steps)
    recipe = TeacherRecipe(
        corpus=corpus, model=model, train_dense=dense, output_dir=settings.home / "teachers"
    )
    with stage_progress("teacher", len(planned_stages(recipe))):
        result = teacher_flow(recipe)
    for label, trained in (("MoE", result.moe), ("dense", result.dense)):
        if trained is not None:
            console.print(
                f"{label} teacher: {trained.path} (held-out perplexity {trained.heldout_perplexity:.2f})"
            )


@app.command()
def watch(
    config: Annotated[
        Path | None, typer.Argument(help="Watch file (configs/watch.example.yaml); none: nothing is watched.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be converted and what is skipped; trigger nothing.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Trigger `convert` runs for new releases of the organisations a watch file names."""
    configure(home)
    from flows.watch import NOTHING_WATCHED, recipe_template, watch_flow
    from flows.watch_config import WatchConfigError, load_watch_config

    if config is None:
        console.print(NOTHING_WATCHED)
        return
    try:
        parsed = load_watch_config(config)
        for entry in parsed.entries:  # every recipe checked before the flow reads the hub
            recipe_template(entry)
    except WatchConfigError as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    report = watch_flow(parsed, dry_run=dry_run)
    for release in report.to_convert:
        run = "would convert" if dry_run else f"flow run {report.triggered[release]} converts"
        console.print(f"{run} {release}", soft_wrap=True, markup=False)
    for release, reason in report.skipped.items():
        console.print(f"skipped {release}: {reason}", soft_wrap=True, markup=False)


@app.command()
def deploy(
    work_pool: Annotated[
        str, typer.Option(help="Process work pool of the deployments.")
    ] = "moe2dense-process",
    gpu_pool: Annotated[
        str | None, typer.Option(help="Work pool for convert / sweep / compare / teacher (team stack).")
    ] = None,
    watch_cron: Annotated[str, typer.Option(help="Cron schedule of watch.")] = "0 */6 * * *",
    watch_config: Annotated[
        Path | None, typer.Option(help="Watch file of the scheduled watch; none: nothing is watched.")
    ] = None,
    gpu_pool_type: Annotated[
        str, typer.Option(help="Type of the GPU pool when it is created: process, docker or kubernetes.")
    ] = "process",
    image: Annotated[
        str | None,
        typer.Option(help="Worker image of a docker / kubernetes GPU pool (default: the template's)."),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe pre-filling convert's form (relative paths made absolute).")
    ] = None,
    override: Annotated[
        list[str] | None,
        typer.Option(help="Dotted override of --recipe (repeat), e.g. source.model=/srv/moe."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Register convert, sweep, compare, teacher and the scheduled watch on the Prefect server in the settings."""
    settings = require_prefect_server(configure(home), "deployments")
    if gpu_pool_type not in ("process", "docker", "kubernetes"):
        console.print(f"[red]--gpu-pool-type {gpu_pool_type!r}: choose process, docker or kubernetes[/red]")
        raise typer.Exit(2)
    default_recipe = load_recipe_or_exit(recipe, override) if recipe else None
    from flows.deploy import deploy_all
    from flows.watch_config import WatchConfigError, load_watch_config

    try:
        watched = load_watch_config(watch_config) if watch_config else None
    except WatchConfigError as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    ids = deploy_all(
        work_pool=work_pool,
        gpu_pool=gpu_pool,
        gpu_pool_type=gpu_pool_type,
        watch_cron=watch_cron,
        watch_config=watched,
        recipe=default_recipe,
        image=image,
        process_home=settings.home,
    )
    console.print(f"registered {len(ids)} deployments on {settings.prefect_api_url}")
    console.print(
        f"start a worker where moe2dense is installed: moe2dense worker --pool {gpu_pool or work_pool}"
    )


def require_prefect_server(settings, needs: str):
    """The settings, or exit 2 saying how to name a Prefect server when they name none."""
    if settings.prefect_api_url is None:
        console.print(
            f"[red]{needs} need a Prefect server and none is configured: set PREFECT_API_URL (or "
            "MOE2DENSE_PREFECT_API_URL, or a settings file), or start one: `moe2dense stack up`.[/red]"
        )
        raise typer.Exit(2)
    return settings


@app.command()
def worker(
    pool: Annotated[
        str, typer.Option(help="Process work pool to poll (created when missing).")
    ] = "moe2dense-process",
    name: Annotated[str | None, typer.Option(help="Worker name (default: Prefect's).")] = None,
    home: HomeOption = None,
) -> None:
    """Run a Prefect process worker on the server the settings name; its flow runs get these settings."""
    settings = require_prefect_server(configure(home), "workers")
    from moe2dense_platform.local_stack import worker_argv

    argv = worker_argv(pool, name)
    console.print(f"worker for pool {pool} on {settings.prefect_api_url}; home {settings.home.resolve()}")
    sys.stdout.flush()
    os.execv(argv[0], argv)  # configure() put the settings into this environment; flow runs inherit it


stack_app = typer.Typer(
    help="The team stack as local processes on 127.0.0.1 (no Docker): Prefect server, MLflow server, "
    "an optional S3 server (moto) and a process worker, with logs and PIDs under <home>/stack.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")


def print_stack(statuses) -> None:
    table = Table("service", "state", "pid", "URL", "log")
    for status in statuses:
        state = "[green]running[/green]" if status.running else "[red]stopped[/red]"
        table.add_row(status.name, state, str(status.pid or ""), status.url, str(status.log))
    console.print(table)


@stack_app.command("up")
def stack_up(
    prefect_port: Annotated[int | None, typer.Option(help="Prefect server (UI and API) port [4200].")] = None,
    mlflow_port: Annotated[int | None, typer.Option(help="MLflow server port [5000].")] = None,
    s3: Annotated[
        bool | None, typer.Option(help="Also run an S3 server (moto) holding the artifacts [no].")
    ] = None,
    s3_port: Annotated[int, typer.Option(help="S3 server port.")] = 9000,
    pool: Annotated[str | None, typer.Option(help="Work pool of the worker [moe2dense-process].")] = None,
    home: HomeOption = None,
) -> None:
    """Start every stack service that is not running, each health-checked; print where they are.
    Options not given keep the values of the last `up` (then the defaults in brackets)."""
    settings = configure(home)
    from dataclasses import asdict

    from moe2dense_platform.local_stack import LocalStack, StackConfig, StackError
    from moe2dense_platform.processes import ProcessError

    stack = LocalStack(settings.home / "stack")
    given = {"prefect_port": prefect_port, "mlflow_port": mlflow_port, "work_pool": pool}
    chosen = {name: value for name, value in given.items() if value is not None}
    if s3 is not None:
        chosen["s3_port"] = s3_port if s3 else None
    config = StackConfig(**(asdict(stack.saved_config() or StackConfig()) | chosen))
    try:
        statuses = stack.up(config)
    except (StackError, ProcessError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    print_stack(statuses)
    print(f"Prefect UI: {config.prefect_api_url.removesuffix('/api')}   MLflow UI: {config.mlflow_url}")
    print(f"use it: export MOE2DENSE_SETTINGS_FILE={stack.settings_file}   (then e.g. moe2dense deploy)")


@stack_app.command("status")
def stack_status(home: HomeOption = None) -> None:
    """Each stack service: running or not, pid, URL, log (exit 1 unless all run)."""
    settings = configure(home)
    from moe2dense_platform.local_stack import LocalStack

    statuses = LocalStack(settings.home / "stack").status()
    print_stack(statuses)
    if not all(status.running for status in statuses):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(home: HomeOption = None) -> None:
    """Stop the stack's services (worker first)."""
    settings = configure(home)
    from moe2dense_platform.local_stack import LocalStack

    stopped = LocalStack(settings.home / "stack").down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def ui(
    home: HomeOption = None,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow UI port.")] = 5000,
) -> None:
    """Start a local Prefect server and the MLflow UI over the embedded default's stores (Ctrl-C stops both).
    The Prefect UI it serves talks to the API on --prefect-port (PREFECT_UI_API_URL), and links into it
    use that address (PREFECT_UI_URL)."""
    settings = configure(home)
    env = {**os.environ, **settings.environment()}
    env.pop("PREFECT_API_URL", None)
    prefect_url = f"http://127.0.0.1:{prefect_port}"
    prefect_env = {**env, "PREFECT_UI_URL": prefect_url, "PREFECT_UI_API_URL": f"{prefect_url}/api"}
    bin_dir = Path(sys.executable).parent
    artifact_root = settings.resolved_mlflow_artifact_location or str(settings.home / "mlartifacts")
    commands = {
        "Prefect": [
            str(bin_dir / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
        ],
        "MLflow": [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            settings.resolved_mlflow_tracking_uri,
            "--default-artifact-root",
            artifact_root,
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ],
    }
    from moe2dense_platform.processes import stop_group

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop both servers on SIGTERM as on Ctrl-C
    environments = {"Prefect": prefect_env, "MLflow": env}
    processes = {  # each in its own process group, so that stopping one stops the workers it started
        name: subprocess.Popen(argv, env=environments[name], start_new_session=True)
        for name, argv in commands.items()
    }
    console.print(f"Prefect UI: {prefect_url}   MLflow UI: http://127.0.0.1:{mlflow_port}")
    console.print(f"to run flows against this server: export MOE2DENSE_PREFECT_API_URL={prefect_url}/api")
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes.values():
            stop_group(process.pid, timeout_s=30)  # SIGTERM, then SIGKILL what is left after 30 s


@app.command()
def report(
    run_id: Annotated[
        str | None, typer.Argument(help="An MLflow parent run id; none: list recent runs.")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "moe2dense-demo",
    out: Annotated[
        Path | None, typer.Option(help="Folder of the report (default: <home>/reports/<RUN_ID>).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """List recent runs, or render one conversion's, sweep's or comparison's report (HTML + PNG plots)
    to a local folder and log it to the run as MLflow artifacts `report/`."""
    settings = configure(home)
    if run_id is None:
        from moe2dense_platform.tracking import TAG_FLOW, tracking_client

        client = tracking_client(settings)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            console.print(f"no experiment {experiment!r} in {settings.resolved_mlflow_tracking_uri}")
            raise typer.Exit(1)
        runs = client.search_runs(
            [found.experiment_id],
            "tags.`moe2dense.stage` IS NULL",
            max_results=20,
            order_by=["attributes.start_time DESC"],
        )
        table = Table("run id", "name", "flow", "status", "started")
        for run in runs:
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
            flow = run.data.tags.get(TAG_FLOW, "convert")
            table.add_row(run.info.run_id, run.info.run_name, flow, run.info.status, started)
        console.print(table)
        return
    from moe2dense_platform.reporting.data import ReportError
    from moe2dense_platform.reporting.render import render_report
    from moe2dense_platform.reporting.runs import REPORT_ARTIFACTS, gather_report, log_report
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import MLflowLogger

    runtime = Runtime.from_environment()
    try:
        data = gather_report(runtime, run_id)
    except ReportError as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    rendered = render_report(data, out or settings.home / "reports" / run_id)
    log_report(MLflowLogger(runtime.client, run_id, runtime.redactor), rendered.folder)
    table = Table("model", "held-out perplexity", "mean accuracy", title=f"{data.kind}: {data.title}")
    for row in data.evaluations:
        accuracy = "" if row.mean_acc is None else f"{row.mean_acc:.4f}"
        label = row.label if row.seed is None else f"{row.label} (seed {row.seed})"
        table.add_row(label, f"{row.perplexity:.3f}", accuracy)
    console.print(table)
    console.print(f"report: {rendered.index}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"MLflow run {run_id}: artifacts {REPORT_ARTIFACTS}/", soft_wrap=True)


@app.command("reconcile-runs")
def reconcile_runs(
    experiment: Annotated[
        list[str] | None, typer.Option(help="MLflow experiment (repeat); default: every experiment.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """End KILLED the RUNNING MLflow runs of moe2dense whose process is gone (SIGKILL, OOM killer, evicted
    pod), as every flow does for its experiment when it starts its run."""
    settings = configure(home)
    from moe2dense_platform.orphan_runs import end_orphaned_runs
    from moe2dense_platform.tracking import tracking_client

    client = tracking_client(settings)
    if experiment:
        found = {name: client.get_experiment_by_name(name) for name in experiment}
        missing = [name for name, value in found.items() if value is None]
        if missing:
            console.print(
                f"no experiment {', '.join(map(repr, missing))} in {settings.resolved_mlflow_tracking_uri}"
            )
            raise typer.Exit(1)
        ids = [value.experiment_id for value in found.values()]
    else:
        ids = [value.experiment_id for value in client.search_experiments()]
    ended = end_orphaned_runs(client, ids)
    for run_id, reason in ended.items():
        console.print(f"ended KILLED: {run_id} ({reason})", soft_wrap=True, markup=False, highlight=False)
    console.print(f"{len(ended)} orphaned run(s) ended")


@app.command()
def schema(
    comparison: Annotated[bool, typer.Option(help="The comparison recipe's schema (`compare`).")] = False,
) -> None:
    """Print the recipe's JSON schema (the form the Prefect UI renders)."""
    if comparison:
        from moe2dense_platform.compare_recipe import compare_recipe_json_schema

        print(compare_recipe_json_schema())
        return
    from moe2dense_platform.recipe_io import recipe_json_schema

    print(recipe_json_schema())
