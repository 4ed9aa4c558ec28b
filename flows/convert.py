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
    teacher_logits  the teacher's top-k log-probabilities, stored once    (when distillation.teacher: cached)
    distill     KD from the teacher (or its stored logits), then evaluate the distilled student (when enabled)
    report      HTML + plots; register the final model with lineage tags     (when a name is set)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel

from moe2dense_core.plan import stats_request_for
from moe2dense_platform.flow_parent import flow_parent_run
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.recipe_teacher import check_recipe_fits_teacher
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import link_stage_runs
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
from tasks.teacher_logits import teacher_logits_task


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
    with flow_parent_run(recipe, "convert") as (runtime, parent):
        source = source_task(recipe.source, parent.run_id)
        check_recipe_fits_teacher(recipe, source.local_path)
        calibration = calibrate_task(
            source, recipe.calibration, recipe.statistics, parent.run_id, stats_request_for(recipe.plan)
        )
        plan = plan_task(source, calibration, recipe.plan, parent.run_id)
        assembled = assemble_task(source, plan, recipe.storage, parent.run_id)

        teacher = EvalTarget(
            label="teacher", checkpoint_digest=source.snapshot_digest, location=source.local_path
        )
        evaluations = [
            evaluate_task(teacher, recipe.evaluation, parent.run_id),
            evaluate_task(target(assembled, "assembled"), recipe.evaluation, parent.run_id),
        ]
        final, distill_run_id, logits = assembled, None, None
        if recipe.distillation is not None and recipe.distillation.enabled:
            if recipe.distillation.teacher == "cached":
                logits = teacher_logits_task(source, recipe.distillation, parent.run_id)
            final = distill_task(source, assembled, recipe.distillation, parent.run_id, teacher_logits=logits)
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
        produced_by = {
            "source": source,
            "calibrate": calibration,
            "plan": plan,
            "assemble": assembled,
            "teacher_logits": logits,
            "report": report,
            "register": registered,
        }
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
        if recipe.distillation.teacher == "cached":
            stages.append("teacher_logits")
        stages += ["distill", "evaluate"]
    stages.append("report")
    if recipe.tracking.registered_model:
        stages.append("register")
    return stages


def target(checkpoint: CheckpointResult, label: str) -> EvalTarget:
    return EvalTarget(
        label=label, checkpoint_digest=checkpoint.checkpoint_digest, location=checkpoint.checkpoint_uri
    )


def export(runtime: Runtime, checkpoint: CheckpointResult, export_dir: Path) -> None:
    """Copy the final checkpoint to a plain local folder (replaced only once the copy is complete)."""
    staging = export_dir.with_name(f".{export_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(runtime.fetch_uri(checkpoint.checkpoint_uri), staging)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    staging.rename(export_dir)
