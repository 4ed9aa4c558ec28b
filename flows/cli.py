"""`moe2dense`: the command line (Typer). Every command reads the settings (environment / settings file)
BEFORE Prefect is imported, because Prefect reads its own settings at import time.

    moe2dense demo                       teacher (trained or reused) → convert → distill → evaluate, no servers
    moe2dense convert RECIPE [a.b=v ...] one conversion from a YAML recipe with dotted overrides
    moe2dense sweep RECIPE --scorer ... --k ... --grouping ... --scaling ... [a.b=v ...]
    moe2dense teacher [--steps N] [--dense] [--text FILE ...]
    moe2dense watch --org Qwen --hub-url URL [--dry-run]
    moe2dense deploy [--work-pool P] [--gpu-pool G] [--watch-cron CRON]
    moe2dense ui                         Prefect server + MLflow UI over the local stores
    moe2dense report [RUN_ID]            recent conversions, or one run's numbers and report
    moe2dense schema                     the recipe's JSON schema
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

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

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPE = PROJECT_ROOT / "configs" / "demo.yaml"

app = typer.Typer(
    help="Convert Mixture-of-Experts LMs into dense ones (arXiv 2605.28207).", no_args_is_help=True
)
console = Console()

HomeOption = Annotated[
    Path | None, typer.Option("--home", help="Local state folder of the embedded default (MOE2DENSE_HOME).")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. plan.num_selected=8.")]


def configure(home: Path | None):
    """Settings from env / settings file (with --home), applied to the environment before Prefect loads."""
    if home is not None:
        os.environ["MOE2DENSE_HOME"] = str(home)
    from tasks.settings import Settings

    settings = Settings()
    settings.apply_environment()
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def load_recipe_or_exit(path: Path, overrides: list[str] | None):
    """The validated recipe, or the field-path errors and exit code 2 — before any task runs."""
    from tasks.recipe import RecipeError
    from tasks.recipe_io import load_recipe

    try:
        return load_recipe(path, overrides or [])
    except (RecipeError, FileNotFoundError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


@contextmanager
def stage_progress(description: str, total: int) -> Iterator[None]:
    """A rich progress bar over a flow's stages, advanced by each task run Prefect reports finished,
    plus a bar of steps for each long stage that reports them (tasks.progress)."""
    from tasks.progress import PROGRESS_LOGGER

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task(description, total=total)

    class FinishedTaskRuns(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Finished in state" in record.getMessage():
                name = getattr(record, "task_run_name", "stage")
                progress.update(bar, advance=1, description=f"{description}: {name} done")

    class StageSteps(logging.Handler):
        """One bar per long stage, from the steps tasks report on `moe2dense.progress`."""

        bars: dict[str, TaskID] = {}

        def emit(self, record: logging.LogRecord) -> None:
            stage, step, total = record.stage, record.step, record.total
            if stage not in self.bars:
                self.bars[stage] = progress.add_task(f"  {stage} steps", total=total)
            progress.update(self.bars[stage], completed=step, total=total)

    handler, steps = FinishedTaskRuns(), StageSteps()
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addHandler(handler)
    PROGRESS_LOGGER.addHandler(steps)
    try:
        with progress:
            yield
    finally:
        task_logger.removeHandler(handler)
        PROGRESS_LOGGER.removeHandler(steps)


def convert_stage_count(recipe) -> int:
    """Task runs of one convert flow: source, calibrate, plan, assemble, 2 evaluations, report
    (+ distill and its evaluation, + register)."""
    distills = recipe.distillation is not None and recipe.distillation.enabled
    return 7 + 2 * distills + bool(recipe.tracking.registered_model)


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
    from flows.convert import convert_flow
    from flows.teacher import TeacherRecipe, teacher_flow
    from tasks.teacher_training import TeacherModelConfig

    model = TeacherModelConfig() if steps is None else TeacherModelConfig(steps=steps)
    teacher = teacher_flow(
        TeacherRecipe(model=model, output_dir=settings.home / "teachers", show_progress=True)
    )
    recipe = load_recipe_or_exit(DEMO_RECIPE, [f"source.model={teacher.moe.path}"])
    with stage_progress("converting", convert_stage_count(recipe)):
        result = convert_flow(recipe)
    print_where(settings, result)


@app.command()
def convert(recipe: Path, overrides: Overrides = None, home: HomeOption = None) -> None:
    """Convert the MoE a YAML recipe names (validated before anything runs)."""
    settings = configure(home)
    parsed = load_recipe_or_exit(recipe, overrides)
    from flows.convert import convert_flow

    with stage_progress("converting", convert_stage_count(parsed)):
        result = convert_flow(parsed)
    print_where(settings, result)


@app.command()
def sweep(
    recipe: Path,
    overrides: Overrides = None,
    scorer: Annotated[list[str] | None, typer.Option(help="Scorers (repeat); default: all seven.")] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Kept experts K (repeat); default: the teacher's k.")
    ] = None,
    grouping: Annotated[list[str] | None, typer.Option(help="Groupers (repeat).")] = None,
    scaling: Annotated[list[str] | None, typer.Option(help="Scalings (repeat).")] = None,
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
    from flows.teacher import TeacherRecipe, teacher_flow
    from tasks.corpus import CorpusSpec
    from tasks.teacher_training import TeacherModelConfig

    corpus = CorpusSpec(source="files", paths=tuple(text)) if text else CorpusSpec()
    model = TeacherModelConfig() if steps is None else TeacherModelConfig(steps=steps)
    result = teacher_flow(
        TeacherRecipe(
            corpus=corpus,
            model=model,
            train_dense=dense,
            output_dir=settings.home / "teachers",
            show_progress=True,
        )
    )
    for label, trained in (("MoE", result.moe), ("dense", result.dense)):
        if trained is not None:
            console.print(
                f"{label} teacher: {trained.path} (held-out perplexity {trained.heldout_perplexity:.2f})"
            )


@app.command()
def watch(
    org: Annotated[list[str] | None, typer.Option(help="Organisations to watch (repeat).")] = None,
    hub_url: Annotated[str | None, typer.Option(help="Hub API base URL.")] = None,
    pattern: Annotated[str | None, typer.Option(help="Regular expression on model ids.")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe template of each conversion.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Deployment that converts, flow/name.")] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would be converted; trigger nothing.")] = False,
    home: HomeOption = None,
) -> None:
    """Find new MoE releases on the hub and trigger `convert` runs for them."""
    configure(home)
    from flows.watch import WatchConfig, watch_flow

    given = {
        "organisations": tuple(org) if org else None,
        "hub_url": hub_url,
        "name_pattern": pattern,
        "recipe": recipe,
        "deployment": deployment,
        "dry_run": dry_run,
    }
    report = watch_flow(WatchConfig(**{name: value for name, value in given.items() if value is not None}))
    console.print(report.model_dump_json(indent=2))


@app.command()
def deploy(
    work_pool: Annotated[
        str, typer.Option(help="Process work pool of the deployments.")
    ] = "moe2dense-process",
    gpu_pool: Annotated[
        str | None, typer.Option(help="Work pool for convert / sweep / teacher (team stack).")
    ] = None,
    watch_cron: Annotated[str, typer.Option(help="Cron schedule of watch.")] = "0 */6 * * *",
    home: HomeOption = None,
) -> None:
    """Register convert, sweep, teacher and the scheduled watch on the Prefect API in the settings."""
    settings = configure(home)
    if settings.prefect_api_url is None:
        console.print(
            "[yellow]No Prefect server configured (MOE2DENSE_PREFECT_API_URL); "
            "deployments need one: start `moe2dense ui` and set it.[/yellow]"
        )
        raise typer.Exit(2)
    from flows.deploy import deploy_all

    ids = deploy_all(work_pool=work_pool, gpu_pool=gpu_pool, watch_cron=watch_cron)
    console.print(
        f"registered {len(ids)} deployments; start a worker: prefect worker start --pool {work_pool}"
    )


@app.command()
def ui(
    home: HomeOption = None,
    prefect_port: Annotated[int, typer.Option(help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow UI port.")] = 5000,
) -> None:
    """Start a local Prefect server and the MLflow UI over the embedded default's stores (Ctrl-C stops both)."""
    settings = configure(home)
    env = {**os.environ, **settings.environment()}
    env.pop("PREFECT_API_URL", None)
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
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop both servers on SIGTERM as on Ctrl-C
    processes = {name: subprocess.Popen(argv, env=env) for name, argv in commands.items()}
    console.print(f"Prefect UI: http://127.0.0.1:{prefect_port}   MLflow UI: http://127.0.0.1:{mlflow_port}")
    console.print(
        f"to run flows against this server: export MOE2DENSE_PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api"
    )
    try:
        while all(p.poll() is None for p in processes.values()):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes.values():
            process.wait(timeout=30)


@app.command()
def report(
    run_id: Annotated[
        str | None, typer.Argument(help="An MLflow parent run id; none: list recent runs.")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "moe2dense-demo",
    home: HomeOption = None,
) -> None:
    """List recent conversions, or show one run's evaluation numbers and report files."""
    settings = configure(home)
    from tasks.tracking import tracking_client

    client = tracking_client(settings)
    if run_id is None:
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
        table = Table("run id", "name", "status", "started")
        for run in runs:
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
            table.add_row(run.info.run_id, run.info.run_name, run.info.status, started)
        console.print(table)
        return
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    for child in children:
        ppl = child.data.metrics.get("eval/perplexity")
        if ppl is not None:
            console.print(f"{child.info.run_name}: held-out perplexity {ppl:.3f}")
    console.print(f"report artifacts: {client.get_run(run_id).info.artifact_uri}/report/index.html")


@app.command()
def schema() -> None:
    """Print the recipe's JSON schema (the form the Prefect UI renders)."""
    from tasks.recipe_io import recipe_json_schema

    print(recipe_json_schema())
