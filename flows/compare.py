"""Flow `compare`: converted students against the paper's baselines, on ONE distillation budget (METHOD.md).

Read top to bottom. One validated CompareRecipe (moe2dense_platform/compare_recipe.py) in; the stages
are the convert flow's cached tasks plus `baseline` (tasks/baseline_student.py).

    source       resolve + validate + digest the teacher; each converted student's plan checked against it
    calibrate    expert statistics, once for every converted student
    build        converted: plan + assemble; d2d: the twin pruned to the reference size (once);
                 random_init / random_ffn: one per seed (the seed initialises it)
    (check)      equal parameter counts (within the core's tolerance) and token budgets — BudgetMismatchError
                 naming the student that differs, BEFORE any training
    teacher_logits  when `distillation.teacher` is `cached`: the teacher's top-k log-probabilities, once
    evaluate     the teacher (held-out perplexity, downstream)
    per student, per seed: distill (the one distillation with train.seed = seed: same rows, same order,
                 same steps for every student), then evaluate (perplexity, KL(teacher ‖ student), downstream)
    (publish)    the comparison table and plots (moe2dense_platform/comparison.py) on the parent run

MLflow: the parent run (the recipe, `moe2dense.flow` = compare) holds the shared stages (source,
calibrate, teacher_logits, evaluate-teacher) and one nested run per student (`student-<name>`, tags
`moe2dense.student` / `moe2dense.student_kind`), under which that student's stages nest. Each run is
tagged with the run that produced each result (`moe2dense.stage_run.<label>`), so a cached re-run still
links to them. The parent gets the table as `comparison/comparison.{json,csv,md}`, the report's rows
`comparison/results.json` (`moe2dense report RUN_ID` draws them), the plots `comparison/perplexity.png`
and `comparison/curves.png` (the folder also stored once in the artifact store, kind
`comparison`, its URI and sha256 in the parent's `moe2dense.output.comparison.*` tags), and metrics
`<student>/perplexity_mean` (…_std, kl_to_teacher_mean, mean_acc_mean); the Prefect flow run gets the
table as its `comparison` table artifact.

Token budget of a student [the core's rule, moe2dense_core/baselines/compare.py]:
T = max_steps · micro_batch_size · grad_accum_steps · W · seq_len, W = the distillation's processes
(`tasks/distill_launch.process_layout`, as the distill stage resolves it); after each distillation the
tokens the loop saw (`distill/tokens_seen` on its run) are checked against T.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from moe2dense_core.baselines import StudentBudget, check_equal_budgets, config_parameter_count
from moe2dense_core.baselines.budget import DEFAULT_PARAM_REL_TOL
from moe2dense_core.errors import BudgetMismatchError
from moe2dense_core.plan import stats_request_for
from moe2dense_platform.compare_recipe import (
    CompareRecipe,
    StudentSpec,
    check_compare_fits_teacher,
    load_compare_recipe,
)
from moe2dense_platform.comparison import (
    Comparison,
    SeedOutcome,
    StudentOutcome,
    TeacherOutcome,
    summary_rows,
    table_markdown,
    write_comparison,
)
from moe2dense_platform.flow_parent import flow_parent_run
from moe2dense_platform.reporting.data import CURVE_METRICS, Curve
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import MLflowLogger, link_stage_runs
from tasks.assemble import assemble_task
from tasks.baseline_student import baseline_student_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.distill_launch import process_layout
from tasks.evaluate import evaluate_task
from tasks.plan import plan_task
from tasks.publish import publish_dir
from tasks.results import CalibrationResult, CheckpointResult, EvalTarget, SourceResult, TeacherLogitsResult
from tasks.source import source_task
from tasks.teacher_logits import teacher_logits_task

TAG_STUDENT = "moe2dense.student"
TAG_STUDENT_KIND = "moe2dense.student_kind"


@dataclass(frozen=True)
class BuiltStudent:
    """A student's checkpoint for each seed (in `recipe.seeds` order) and, when converted, its plan's run."""

    checkpoints: list[CheckpointResult]
    plan_run_id: str | None = None


class CompareResult(BaseModel):
    """The comparison (table values, per-seed outcomes) and where it is recorded."""

    recipe_name: str
    mlflow_run_id: str
    comparison: Comparison
    comparison_uri: str


@flow(name="compare", log_prints=True)
def compare_flow(recipe: CompareRecipe) -> CompareResult:
    with flow_parent_run(recipe, "compare") as (runtime, parent):
        source = source_task(recipe.source, parent.run_id)
        check_compare_fits_teacher(recipe, source.local_path)
        plans = [s.plan for s in recipe.students if s.kind == "converted"]
        calibration = calibrate_task(
            source, recipe.calibration, recipe.statistics, parent.run_id, stats_request_for(plans)
        )
        with ExitStack() as student_runs:
            runs = {
                s.name: student_runs.enter_context(student_run(runtime, parent.run_id, s))
                for s in recipe.students
            }
            built = build_students(recipe, source, calibration, runs)
            budgets = check_budgets(runtime, recipe, built)

            teacher_logits = None
            if recipe.distillation.teacher == "cached":
                teacher_logits = teacher_logits_task(source, recipe.distillation, parent.run_id)
            teacher = EvalTarget(
                label="teacher", checkpoint_digest=source.snapshot_digest, location=source.local_path
            )
            teacher_evaluation = evaluate_task(teacher, recipe.evaluation, parent.run_id)
            students = [
                distill_and_evaluate(
                    runtime,
                    recipe,
                    student,
                    source,
                    built[student.name],
                    budgets[student.name],
                    teacher,
                    teacher_logits,
                    runs[student.name],
                )
                for student in recipe.students
            ]
            shared = {
                "source": source,
                "calibrate": calibration,
                "evaluate-teacher": teacher_evaluation,
                "teacher_logits": teacher_logits,
            }
            link_stage_runs(parent, {label: r.mlflow_run_id for label, r in shared.items() if r is not None})

        comparison = Comparison(
            recipe_name=recipe.name,
            recipe_digest=recipe.digest(),
            param_rel_tol=DEFAULT_PARAM_REL_TOL,
            teacher=TeacherOutcome(
                num_params=config_parameter_count(source.local_path),
                perplexity=teacher_evaluation.perplexity,
                mean_acc=teacher_evaluation.downstream_mean_acc,
                evaluate_run_id=teacher_evaluation.mlflow_run_id,
            ),
            students=[outcome for outcome, _ in students],
        )
        uri = publish_comparison(
            runtime, parent, comparison, [curve for _, curves in students for curve in curves]
        )
        print(table_markdown(summary_rows(comparison)))
        return CompareResult(
            recipe_name=recipe.name, mlflow_run_id=parent.run_id, comparison=comparison, comparison_uri=uri
        )


def compare(recipe_path: str, overrides: Sequence[str] = ()) -> CompareResult:
    """Run `compare_flow` on a YAML comparison recipe with dotted overrides (validated first: RecipeError
    naming the field, and each converted student's plan against a local teacher's config.json)."""
    recipe = load_compare_recipe(recipe_path, overrides)
    check_compare_fits_teacher(recipe, origin=recipe_path)
    return compare_flow(recipe)


@contextmanager
def student_run(runtime: Runtime, parent_run_id: str, student: StudentSpec) -> Iterator[MLflowLogger]:
    """The student's run `student-<name>` nested under the parent (its stages nest under it), tagged with
    the student's name and kind; FINISHED when the block returns, FAILED when it raises."""
    with runtime.stage(parent_run_id, f"student-{student.name}", {"student": student}) as run:
        run.set_tags({TAG_STUDENT: student.name, TAG_STUDENT_KIND: student.kind})
        yield run


def build_students(
    recipe: CompareRecipe,
    source: SourceResult,
    calibration: CalibrationResult,
    runs: dict[str, MLflowLogger],
) -> dict[str, BuiltStudent]:
    """{student: what was built} — converted students first (the reference is one), then the baselines
    (d2d once, random students once per seed)."""
    built: dict[str, BuiltStudent] = {}
    for student in (s for s in recipe.students if s.kind == "converted"):
        run_id = runs[student.name].run_id
        plan = plan_task(source, calibration, student.plan, run_id)
        assembled = assemble_task(source, plan, recipe.storage, run_id)
        link_stage_runs(runs[student.name], {"plan": plan.mlflow_run_id, "assemble": assembled.mlflow_run_id})
        built[student.name] = BuiltStudent([assembled] * len(recipe.seeds), plan.mlflow_run_id)
    reference = built[recipe.reference.name].checkpoints[0]
    for student in (s for s in recipe.students if s.kind != "converted"):
        seeds = recipe.seeds[:1] if student.kind == "d2d" else recipe.seeds
        made = [
            baseline_student_task(
                student,
                source,
                reference,
                recipe.calibration,
                recipe.twin,
                seed,
                recipe.storage,
                runs[student.name].run_id,
            )
            for seed in seeds
        ]
        link_stage_runs(
            runs[student.name],
            {f"baseline-seed{s}": m.mlflow_run_id for s, m in zip(seeds, made, strict=True)},
        )
        built[student.name] = BuiltStudent(made * len(recipe.seeds) if student.kind == "d2d" else made)
    return built


def token_budget(recipe: CompareRecipe) -> int:
    """T = max_steps · tokens_per_step(W), W the distillation's processes here (module docstring)."""
    distillation = recipe.distillation
    return distillation.train.max_steps * distillation.tokens_per_step(
        process_layout(distillation).world_size
    )


def check_budgets(
    runtime: Runtime, recipe: CompareRecipe, built: dict[str, BuiltStudent]
) -> dict[str, StudentBudget]:
    """{student: its budget}; BudgetMismatchError naming the student whose parameter count (the core's
    count from config.json, `config_parameter_count`) is off by more than the core's tolerance, or whose
    token budget differs — for any seed, before anything is trained."""
    budgets: dict[str, StudentBudget] = {}
    for index, _ in enumerate(recipe.seeds):
        per_seed = [
            StudentBudget(
                name=student.name,
                num_params=config_parameter_count(
                    runtime.fetch_uri(built[student.name].checkpoints[index].checkpoint_uri)
                ),
                train_tokens=token_budget(recipe),
            )
            for student in recipe.students
        ]
        check_equal_budgets(per_seed)
        budgets.update({budget.name: budget for budget in per_seed})
    return budgets


def distill_and_evaluate(
    runtime: Runtime,
    recipe: CompareRecipe,
    student: StudentSpec,
    source: SourceResult,
    built: BuiltStudent,
    budget: StudentBudget,
    teacher: EvalTarget,
    teacher_logits: TeacherLogitsResult | None,
    run: MLflowLogger,
) -> tuple[StudentOutcome, list[Curve]]:
    """Distill the student once per seed (the one distillation, train.seed = seed; BudgetMismatchError
    unless it saw the budget's tokens), evaluate each result against the teacher; and its curves."""
    outcomes, curves, links = [], [], {}
    for seed, checkpoint in zip(recipe.seeds, built.checkpoints, strict=True):
        distilled = distill_task(
            source, checkpoint, recipe.distillation_for(seed), run.run_id, teacher_logits=teacher_logits
        )
        tokens_seen = int(runtime.client.get_run(distilled.mlflow_run_id).data.metrics["distill/tokens_seen"])
        if tokens_seen != budget.train_tokens:
            raise BudgetMismatchError(
                f"student {student.name!r} (seed {seed}) trained on {tokens_seen:,} tokens, "
                f"the budget is {budget.train_tokens:,}"
            )
        label = f"{student.name}-seed{seed}"
        target = EvalTarget(
            label=label, checkpoint_digest=distilled.checkpoint_digest, location=distilled.checkpoint_uri
        )
        evaluation = evaluate_task(target, recipe.evaluation, run.run_id, teacher=teacher)
        outcomes.append(
            SeedOutcome(
                seed=seed,
                perplexity=evaluation.perplexity,
                kl_to_teacher=evaluation.kl_to_teacher,
                mean_acc=evaluation.downstream_mean_acc,
                tokens_seen=tokens_seen,
                built_uri=checkpoint.checkpoint_uri,
                distilled_uri=distilled.checkpoint_uri,
                distill_run_id=distilled.mlflow_run_id,
                evaluate_run_id=evaluation.mlflow_run_id,
            )
        )
        curves += distillation_curves(runtime, distilled.mlflow_run_id, f"{student.name} seed {seed}")
        links.update(
            {f"distill-seed{seed}": distilled.mlflow_run_id, f"evaluate-seed{seed}": evaluation.mlflow_run_id}
        )
    link_stage_runs(run, links)
    outcome = StudentOutcome(
        name=student.name,
        kind=student.kind,
        num_params=budget.num_params,
        train_tokens=budget.train_tokens,
        seeds=outcomes,
        plan_run_id=built.plan_run_id,
    )
    return outcome, curves


def distillation_curves(runtime: Runtime, run_id: str, label: str) -> list[Curve]:
    """The distill run's CURVE_METRICS histories (loss, KL) against the optimizer step."""
    curves = []
    for metric in CURVE_METRICS:
        points = sorted((m.step, m.value) for m in runtime.client.get_metric_history(run_id, metric))
        if points:
            curves.append(
                Curve(label=label, metric=metric, steps=[s for s, _ in points], values=[v for _, v in points])
            )
    return curves


def publish_comparison(
    runtime: Runtime, parent: MLflowLogger, comparison: Comparison, curves: list[Curve]
) -> str:
    """The table and plots on the parent run (`comparison/…`), once in the store (kind `comparison`), the
    summary metrics, and the Prefect table artifact; returns the stored folder's URI."""
    rows = summary_rows(comparison)
    with runtime.scratch("compare") as scratch:
        folder = scratch / "comparison"
        write_comparison(comparison, curves, folder)
        uri = publish_dir(runtime, parent, folder, kind="comparison", name="comparison")
        parent.log_artifact(folder)
    metrics = {}
    for row in rows[1:]:
        for column in ("perplexity", "kl_to_teacher", "mean_acc"):
            for statistic, value in (("mean", row[column]), ("std", row[f"{column}_std"])):
                if value is not None:
                    metrics[f"{row['model']}/{column}_{statistic}"] = value
    parent.log_metrics(metrics)
    create_table_artifact(
        key="comparison",
        table=[{column: value for column, value in row.items() if value is not None} for row in rows],
        description=f"{comparison.recipe_name}: held-out perplexity, KL to the teacher and mean accuracy "
        "after the same distillation (mean and sample std over seeds)",
    )
    return uri


def planned_stages(recipe: CompareRecipe) -> list[str]:
    """The stage task runs `compare_flow(recipe)` makes, in order (the CLI's progress total)."""
    stages = ["source", "calibrate"]
    stages += ["plan", "assemble"] * sum(s.kind == "converted" for s in recipe.students)
    for student in (s for s in recipe.students if s.kind != "converted"):
        stages += ["baseline"] * (1 if student.kind == "d2d" else len(recipe.seeds))
    if recipe.distillation.teacher == "cached":
        stages.append("teacher_logits")
    stages.append("evaluate")
    return stages + ["distill", "evaluate"] * len(recipe.students) * len(recipe.seeds)
