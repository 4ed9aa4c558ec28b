"""Flow `study`: the paper's study in miniature, teacher → sweep → comparison, with its tables and plots.

Read top to bottom (configs/study/cpu.yaml, docs/results.md):
1. text: the study's two disjoint sides (flows/study_config.py) copied under `<out>/text`;
2. the MoE teacher (flow `teacher`): a Qwen3-MoE trained on the teacher side (or reused: same config
   and text → same folder); then one routing pass over the teacher side's held-out text (router
   entropy and expert load per layer, moe2dense_core.teacher.routing);
3. the grid (flow `sweep`, twice on ONE cached calibration): `prune` at K = k and the merging groupers
   at each K > k, every scorer (the `random` control included) × every scaling, ranked by the
   pre-distillation perplexity on the teacher side's held-out text;
4. the dense twin (flow `teacher` again, the MoE reused): the equal-size dense Qwen3 for d2d, trained
   after the grid so that the grid does not wait for it;
5. the comparison (flow `compare`) on ONE budget over the distill side: the `best` configurations of the
   grid, do_acp and sf at K = k (prune, uniform), d2d from the dense twin, random init, random FFN, once
   per seed; each distilled student is then also evaluated on the teacher side's held-out text;
6. `<out>/results/`: study.json, tables.md and the plots (flows/study_results.py), written after every
   step, so an interrupted study leaves what finished.
Every stage is a cached task of the flows it calls: a re-run continues where the last one stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import BaseModel

from flows.compare import compare_flow
from flows.study_config import StudyConfig, StudySizes
from flows.study_results import write_results
from flows.sweep import SweepEntry, SweepGrid, SweepRecipe, sweep_flow
from flows.teacher import TeacherFlowResult, TeacherRecipe, teacher_flow
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.plan import PlanConfig
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from moe2dense_core.teacher.routing import routing_profile
from moe2dense_platform.compare_recipe import CompareRecipe, StudentSpec
from moe2dense_platform.corpus import CorpusSpec, token_rows
from moe2dense_platform.flow_parent import flow_parent_run
from moe2dense_platform.recipe import (
    CalibrationConfig,
    DistillationConfig,
    EvaluationConfig,
    Recipe,
    SourceConfig,
    StatisticsConfig,
    StorageConfig,
)
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_CHECKPOINT_DIGEST
from tasks.evaluate import evaluate_task
from tasks.results import EvalTarget

PAPER_PLANS = {"do_acp": PlanConfig(scoring="do_acp"), "sf": PlanConfig(scoring="sf")}
"""The paper's named students at K = k: pure pruning, uniform scaling."""
STORAGE = StorageConfig(checkpoint_dtype="float32", max_shard_size_mb=200)


class StudyResult(BaseModel):
    """Where the study's results are, and the MLflow runs that hold them."""

    output_dir: str
    results_dir: str
    mlflow_run_id: str
    sweep_run_ids: list[str]
    compare_run_id: str | None
    seconds: dict[str, float]


def write_study_text(study: StudyConfig, out: Path) -> dict[str, CorpusSpec]:
    """`<out>/text/{teacher,distill}.txt`: each side's files, every line stripped (flows/study_config.py),
    and the CorpusSpec that reads it."""
    specs = {}
    for side in ("teacher", "distill"):
        files = study.text.files(side)
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"text.{side}: {missing} not found (MOE2DENSE_SHARED_DATA names the data folder)"
            )
        lines = (line.strip() for path in files for line in path.read_text(encoding="utf-8").splitlines())
        target = out / "text" / f"{side}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, "\n".join(lines)[: study.text.max_chars])
        specs[side] = CorpusSpec(
            source="files", paths=(target,), heldout_fraction=study.text.heldout_fraction
        )
    return specs


def conversion_recipe(study: StudyConfig, teacher: str, text: dict[str, CorpusSpec]) -> Recipe:
    """The sweep's recipe: calibration and ranking on the teacher side, no distillation."""
    return Recipe(
        name=f"{study.name}-grid",
        source=SourceConfig(model=teacher),
        calibration=CalibrationConfig(data=text["teacher"], **_sizes(study.calibration, "num_tokens")),
        statistics=StatisticsConfig(mode="in_memory", dtype="auto"),
        evaluation=evaluation_config(study, text["teacher"]),
        tracking=study.tracking,
        storage=STORAGE,
    )


def evaluation_config(study: StudyConfig, text: CorpusSpec) -> EvaluationConfig:
    return EvaluationConfig(perplexity_data=text, **_sizes(study.evaluation, "perplexity_tokens"))


def _sizes(sizes, tokens_field: str) -> dict[str, int]:
    return {tokens_field: sizes.num_tokens, "seq_len": sizes.seq_len, "batch_size": sizes.batch_size}


def sweep_grids(study: StudyConfig) -> list[SweepGrid]:
    """`prune` at K = k, then the merging groupers at each K > k (flows/study_config.py)."""
    grid = study.grid
    return [
        SweepGrid(scorers=grid.scorers, num_selected=(None,), groupings=("prune",), scalings=grid.scalings),
        SweepGrid(
            scorers=grid.scorers,
            num_selected=grid.num_selected,
            groupings=grid.groupings,
            scalings=grid.scalings,
        ),
    ]


def student_name(plan: PlanConfig) -> str:
    """`do_acp-Kk-prune-uniform`: scorer, K (k when num_selected is None), grouper, scaling."""
    k = "k" if plan.num_selected is None else str(plan.num_selected)
    return f"{plan.scoring.name}-K{k}-{plan.grouping.name}-{plan.scaling.name}"


def compared_students(study: StudyConfig, ranked: list[SweepEntry]) -> list[StudentSpec]:
    """The `best` configurations of the grid (best first: the reference), then do_acp and sf at K = k
    unless already among them, then the baselines."""
    plans = [entry.plan for entry in ranked[: study.comparison.best]]
    plans += [plan for plan in PAPER_PLANS.values() if student_name(plan) not in map(student_name, plans)]
    students = [StudentSpec(name=student_name(plan), kind="converted", plan=plan) for plan in plans]
    return students + [StudentSpec(name=kind, kind=kind) for kind in ("d2d", "random_init", "random_ffn")]


def compare_recipe(
    study: StudyConfig, teachers: TeacherFlowResult, text: dict[str, CorpusSpec], students: list[StudentSpec]
) -> CompareRecipe:
    """One budget on the distill side; calibration (for d2d's channel ranking too) on the teacher side."""
    comparison = study.comparison
    assert teachers.dense is not None
    return CompareRecipe(
        name=f"{study.name}-compare",
        source=SourceConfig(model=teachers.moe.path),
        twin=SourceConfig(model=teachers.dense.path),
        students=students,
        calibration=CalibrationConfig(data=text["teacher"], **_sizes(study.calibration, "num_tokens")),
        distillation=DistillationConfig(
            data=text["distill"],
            seq_len=comparison.seq_len,
            train=comparison.train,
            teacher=comparison.teacher,
            teacher_cache=comparison.teacher_cache,
        ),
        evaluation=evaluation_config(study, text["distill"]),
        seeds=comparison.seeds,
        tracking=study.tracking,
        storage=STORAGE,
    )


def routing_of(teacher: str, text: CorpusSpec, sizes: StudySizes) -> dict[str, Any]:
    """The MoE teacher's routing profile (moe2dense_core.teacher.routing) on the first `sizes.num_tokens`
    held-out tokens of the teacher side (the tokens the grid is ranked on)."""
    model = load_causal_lm(teacher)
    heldout = token_rows(text, load_tokenizer(teacher), sizes.seq_len, "heldout").reshape(-1)
    return routing_profile(model, heldout[: sizes.num_tokens], sizes.seq_len, sizes.batch_size).to_dict()


def train_teachers(
    study: StudyConfig, text: dict[str, CorpusSpec], out: Path, dense: bool
) -> TeacherFlowResult:
    """Flow `teacher` on the teacher side: the MoE, and with `dense` its equal-size dense twin (an already
    trained teacher of the same config and text is reused from `<out>/teachers`)."""
    recipe = TeacherRecipe(
        corpus=text["teacher"], model=study.teacher, train_dense=dense, output_dir=out / "teachers"
    )
    return teacher_flow(recipe)


def teacher_records(teachers: TeacherFlowResult) -> dict[str, Any]:
    """Each teacher's training record (teacher.json: config, tokens, held-out perplexity, seconds)."""
    return {
        kind: json.loads(Path(result.path, "teacher.json").read_text()) | {"path": result.path}
        for kind, result in (("moe", teachers.moe), ("dense", teachers.dense))
        if result is not None
    }


def run_seconds(runtime: Runtime, run_id: str) -> float | None:
    """Wall-clock of an MLflow run (end − start), None while it has no end."""
    info = runtime.client.get_run(run_id).info
    return None if info.end_time is None else (info.end_time - info.start_time) / 1000


@flow(name="study", log_prints=True)
def study_flow(study: StudyConfig, output_dir: Path) -> StudyResult:
    out = Path(output_dir).absolute()
    results_dir = out / "results"
    record: dict[str, Any] = {"study": study.model_dump(mode="json"), "seconds": {}}
    seconds = record["seconds"]

    def save() -> None:
        write_results(record, results_dir)

    with flow_parent_run(study, "study") as (runtime, parent):
        started = time.perf_counter()
        text = write_study_text(study, out)
        teachers = train_teachers(study, text, out, dense=False)
        record["teachers"] = teacher_records(teachers)
        record["routing"] = routing_of(teachers.moe.path, text["teacher"], study.evaluation)
        parent.log_text(json.dumps(record["routing"], indent=2), "study/routing.json")
        seconds["moe teacher"] = time.perf_counter() - started
        save()

        started = time.perf_counter()
        recipe = conversion_recipe(study, teachers.moe.path, text)
        sweeps = [
            sweep_flow(SweepRecipe(recipe=recipe, grid=grid, distill_best=0)) for grid in sweep_grids(study)
        ]
        ranked = sorted((e for s in sweeps for e in s.entries), key=lambda e: e.perplexity)
        record["grid"] = [e.model_dump(mode="json") for e in ranked]
        record["sweep_run_ids"] = [s.mlflow_run_id for s in sweeps]
        seconds["grid"] = time.perf_counter() - started
        save()

        started = time.perf_counter()
        teachers = train_teachers(study, text, out, dense=True)  # the MoE is reused
        record["teachers"] = teacher_records(teachers)
        seconds["dense teacher"] = time.perf_counter() - started
        save()

        started = time.perf_counter()
        comparison = compare_flow(compare_recipe(study, teachers, text, compared_students(study, ranked)))
        record["comparison"] = comparison.comparison.model_dump(mode="json")
        record["compare_run_id"] = comparison.mlflow_run_id
        record["runs"] = per_run_details(
            runtime, comparison, evaluation_config(study, text["teacher"]), parent.run_id
        )
        seconds["comparison"] = time.perf_counter() - started
        save()
        parent.log_artifact(results_dir)
        return StudyResult(
            output_dir=str(out),
            results_dir=str(results_dir),
            mlflow_run_id=parent.run_id,
            sweep_run_ids=record["sweep_run_ids"],
            compare_run_id=comparison.mlflow_run_id,
            seconds=seconds,
        )


def per_run_details(
    runtime: Runtime, comparison, teacher_side: EvaluationConfig, parent_run_id: str
) -> list[dict]:
    """Per student and seed: wall-clock of its distillation and evaluation, its distillation curves, and
    its perplexity on the teacher side's held-out text (an evaluation nested under the study's run)."""
    from flows.compare import distillation_curves

    details = []
    for student in comparison.comparison.students:
        for outcome in student.seeds:
            label = f"{student.name}-seed{outcome.seed}"
            digest = runtime.client.get_run(outcome.distill_run_id).data.tags[TAG_CHECKPOINT_DIGEST]
            target = EvalTarget(
                label=f"{label}-teacher-text", checkpoint_digest=digest, location=outcome.distilled_uri
            )
            teacher_text = evaluate_task(target, teacher_side, parent_run_id)
            details.append(
                {
                    "student": student.name,
                    "kind": student.kind,
                    "seed": outcome.seed,
                    "distill_seconds": run_seconds(runtime, outcome.distill_run_id),
                    "evaluate_seconds": run_seconds(runtime, outcome.evaluate_run_id),
                    "teacher_text_perplexity": teacher_text.perplexity,
                    "curves": [
                        c.model_dump() for c in distillation_curves(runtime, outcome.distill_run_id, label)
                    ],
                }
            )
    return details
