"""Flow `convert`: one MoE → dense conversion end to end, from ONE validated Recipe parameter.

Read top to bottom. Each stage is a cached Prefect task declared in its own module (tasks/<stage>.py,
tasks/stage.py) with URIs in and out; the flow opens the MLflow parent run, each task its nested stage
run, and the parent run is tagged with the run that produced each result (`moe2dense.stage_run.<label>`),
so a fully cached re-run still links to the runs that made its results. `planned_stages(recipe)` is the
list of stage task runs this flow makes for a recipe (the CLI's progress total).

    source      resolve + validate + digest the teacher snapshot
    (check)     the recipe fits the teacher's config (K ≥ k, K ≤ E, k' ≤ E, …) — refused before calibration
    calibrate   expert statistics on calibration text            (the expensive read of the teacher)
    plan        scores → kept experts → groups → scales          (cheap; pure)
    assemble    the dense Hugging Face checkpoint
    evaluate    teacher and assembled student (pre-distillation perplexity)
    distill     KD from the teacher, then evaluate the distilled student      (when enabled)
    report      HTML + plots; register the final model with lineage tags     (when a name is set)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from moe2dense_platform.preflight import preflight
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.recipe_teacher import check_recipe_fits_teacher
from moe2dense_platform.result_storage import ensure_result_storage
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import link_stage_runs, parent_run, run_url
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.evaluate import evaluate_task
from tasks.plan import plan_task
from tasks.report import register_task, report_task
from tasks.results import (
    CalibrationResult,
    CheckpointResult,
    EvalTarget,
    EvaluationResult,
    PlanResult,
    ReportInputs,
    SourceResult,
)
from tasks.source import source_task


class ConvertResult(BaseModel):
    """Everything a conversion produced: small values and URIs (no tensors)."""

    recipe_name: str
    mlflow_run_id: str
    source: SourceResult
    calibration: CalibrationResult
    plan: PlanResult
    assembled: CheckpointResult
    final: CheckpointResult
    evaluations: list[EvaluationResult]
    report_uri: str
    registered_model: str | None = None


@flow(name="convert", log_prints=True)
def convert_flow(recipe: Recipe) -> ConvertResult:
    ensure_result_storage()  # the stage tasks persist their results in the artifact store
    runtime = Runtime.from_environment()
    preflight(runtime.settings, runtime.redactor)  # tracking server, bucket, credentials: seconds, not minutes
    with parent_run(
        runtime.client,
        recipe,
        runtime.redactor,
        artifact_location=runtime.settings.resolved_mlflow_artifact_location,
        flow_run_id=flow_run.id,
        flow_run_url=flow_run.ui_url,
    ) as parent:
        link_mlflow_run(runtime, parent.run_id)
        source = source_task(recipe.source, parent.run_id)
        check_recipe_fits_teacher(recipe, source.local_path)
        calibration = calibrate_task(source, recipe.calibration, recipe.statistics, parent.run_id)
        plan = plan_task(source, calibration, recipe.plan, parent.run_id)
        assembled = assemble_task(source, plan, recipe.storage, parent.run_id)

        teacher = EvalTarget(
            label="teacher", checkpoint_digest=source.snapshot_digest, location=source.local_path
        )
        evaluations = [
            evaluate_task(teacher, recipe.evaluation, parent.run_id),
            evaluate_task(target(assembled, "assembled"), recipe.evaluation, parent.run_id),
        ]
        final, distill_run_id = assembled, None
        if recipe.distillation is not None and recipe.distillation.enabled:
            final = distill_task(source, assembled, recipe.distillation, parent.run_id)
            distill_run_id = final.mlflow_run_id
            evaluations.append(evaluate_task(target(final, "distilled"), recipe.evaluation, parent.run_id))

        inputs = ReportInputs(
            recipe_name=recipe.name,
            source=source,
            plan=plan,
            checkpoint=final,
            evaluations=evaluations,
            distill_run_id=distill_run_id,
        )
        report = report_task(inputs, recipe.digest(), parent.run_id)
        registered = None
        if recipe.tracking.registered_model:
            registered = register_task(
                source, plan, final, recipe.tracking.registered_model, flow_run.id, parent.run_id
            )
        produced_by = {"source": source, "calibrate": calibration, "plan": plan, "assemble": assembled,
                       "report": report, "register": registered}
        if final is not assembled:
            produced_by["distill"] = final
        produced_by.update({f"evaluate-{e.label}": e for e in evaluations})
        link_stage_runs(parent, {label: r.mlflow_run_id for label, r in produced_by.items() if r is not None})
        if recipe.storage.export_dir is not None:
            export(runtime, final, recipe.storage.export_dir)
        for evaluation in evaluations:
            print(f"{evaluation.label}: held-out perplexity {evaluation.perplexity:.2f}")
        print(f"report: {report.report_uri}")
        return ConvertResult(
            recipe_name=recipe.name,
            mlflow_run_id=parent.run_id,
            source=source,
            calibration=calibration,
            plan=plan,
            assembled=assembled,
            final=final,
            evaluations=evaluations,
            report_uri=report.report_uri,
            registered_model=registered and registered.label,
        )


def planned_stages(recipe: Recipe) -> list[str]:
    """The stage task runs `convert_flow(recipe)` makes, in order (tested against a real run's records)."""
    stages = ["source", "calibrate", "plan", "assemble", "evaluate", "evaluate"]
    if recipe.distillation is not None and recipe.distillation.enabled:
        stages += ["distill", "evaluate"]
    stages.append("report")
    if recipe.tracking.registered_model:
        stages.append("register")
    return stages


def target(checkpoint: CheckpointResult, label: str) -> EvalTarget:
    return EvalTarget(
        label=label, checkpoint_digest=checkpoint.checkpoint_digest, location=checkpoint.checkpoint_uri
    )


def link_mlflow_run(runtime: Runtime, run_id: str) -> None:
    """A Prefect link artifact on the flow run to the MLflow run's page (tracking URI with no credentials);
    an embedded (file / SQLite) tracking store has no page: a markdown note naming the run instead."""
    uri = runtime.redactor.redact(runtime.settings.resolved_mlflow_tracking_uri)
    description = "Where this flow run's lineage, metrics and artifacts are recorded"
    if uri.startswith(("http://", "https://")):
        experiment_id = runtime.client.get_run(run_id).info.experiment_id
        create_link_artifact(
            key="mlflow-run", link=run_url(uri, experiment_id, run_id), link_text=f"MLflow run {run_id}",
            description=description,
        )
    else:
        create_markdown_artifact(
            key="mlflow-run",
            markdown=f"MLflow parent run `{run_id}` on `{uri}` (browse: `moe2dense ui`, `moe2dense report {run_id}`)",
            description=description,
        )


def export(runtime: Runtime, checkpoint: CheckpointResult, export_dir: Path) -> None:
    """Copy the final checkpoint to a plain local folder (replaced only once the copy is complete)."""
    staging = export_dir.with_name(f".{export_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(runtime.fetch_uri(checkpoint.checkpoint_uri), staging)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    staging.rename(export_dir)
