"""Flow `sweep`: the paper's design space from ONE cached calibration (METHOD.md, "350 configurations").

Read top to bottom:
1. source + ONE calibration of the teacher (cached: a later sweep on the same teacher and data
   calibrates zero times);
2. every configuration of scorers × K × groupers × scalings (SweepGrid) is validated against the teacher first,
   then planned and assembled as concurrent task runs (two waves: plans, then checkpoints), and
   scored by pre-distillation held-out perplexity one model at a time;
3. the best N configurations (lowest perplexity) are distilled and evaluated in full.
The table of every configuration is a Prefect table artifact and `sweep/results.json` on the MLflow
parent run.
"""

from __future__ import annotations

import itertools
import json
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from moe2dense_core.plan import (
    GrouperChoice,
    PlanConfig,
    ScalingChoice,
    ScorerChoice,
    grouping_fits,
    stats_request_for,
    validate_plan_config,
)
from moe2dense_core.scoring import compared_scorers
from moe2dense_platform.flow_parent import flow_parent_run
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.runtime import Runtime
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.evaluate import evaluate_task
from tasks.plan import plan_task
from tasks.results import EvalTarget
from tasks.source import source_task


class SweepGrid(BaseModel):
    """The design space: every combination of the four axes is one PlanConfig (num_groups from the recipe's
    plan). A method written by its name takes its default options.

    scorers: default every registered scorer but the controls (`random`);
    num_selected: values of K, None = k (pure pruning);
    groupings, scalings: default the recipe plan's grouping and scaling (with their options).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scorers: tuple[ScorerChoice, ...] = Field(
        default_factory=lambda: tuple(compared_scorers()), validate_default=True, min_length=1
    )
    num_selected: tuple[int | None, ...] = Field(default=(None,), min_length=1)
    groupings: Annotated[tuple[GrouperChoice, ...], Field(min_length=1)] | None = None
    scalings: Annotated[tuple[ScalingChoice, ...], Field(min_length=1)] | None = None

    def configs(self, base: PlanConfig, top_k: int) -> list[PlanConfig]:
        """Every combination whose grouping fits its K (plan.grouping_fits: a grouper that does not merge,
        `prune`, only at K = k); the flow still validates each against the teacher."""
        product = itertools.product(
            self.scorers,
            self.num_selected,
            self.groupings or (base.grouping,),
            self.scalings or (base.scaling,),
        )
        combinations = (
            base.model_copy(update={"scoring": s, "num_selected": k, "grouping": g, "scaling": c})
            for s, k, g, c in product
        )
        return [config for config in combinations if grouping_fits(config, top_k)]


class SweepRecipe(BaseModel):
    """The one parameter of the sweep flow: a conversion recipe, the grid, and how many to distill."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: Recipe
    grid: SweepGrid = Field(default_factory=SweepGrid)
    distill_best: int = Field(default=1, ge=0)


class SweepEntry(BaseModel):
    plan: PlanConfig
    plan_digest: str
    checkpoint_uri: str
    perplexity: float
    distilled_perplexity: float | None = None
    distilled_mean_acc: float | None = None
    distill_run_id: str | None = None  # the run that distilled it (its curves: `moe2dense report`)


class SweepResult(BaseModel):
    mlflow_run_id: str
    stats_digest: str
    entries: list[SweepEntry]


SWEEP_WORKERS = 4
"""Stage tasks of a sweep running at once: Prefect's default thread pool is unbounded, and a grid of
128 configurations planned at once opens 128 MLflow sessions; the embedded SQLite store's connection
pool (5 + 10 overflow) then times out, and a 2-core worker gains nothing past a few."""


@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=SWEEP_WORKERS))
def sweep_flow(sweep: SweepRecipe) -> SweepResult:
    recipe = sweep.recipe
    with flow_parent_run(recipe, "sweep") as (runtime, parent):
        source = source_task(recipe.source, parent.run_id)
        configs = sweep.grid.configs(recipe.plan, source.top_k)
        for config in configs:
            validate_plan_config(config, source.num_experts, source.top_k)
        calibration = calibrate_task(
            source, recipe.calibration, recipe.statistics, parent.run_id, stats_request_for(configs)
        )

        plans = [
            f.result() for f in [plan_task.submit(source, calibration, c, parent.run_id) for c in configs]
        ]
        students = [
            f.result()
            for f in [assemble_task.submit(source, p, recipe.storage, parent.run_id) for p in plans]
        ]
        targets = [
            EvalTarget(
                label=f"assembled-{i}", checkpoint_digest=s.checkpoint_digest, location=s.checkpoint_uri
            )
            for i, s in enumerate(students)
        ]
        # one at a time: loading models (from_pretrained) touches process-global torch state, unsafe in threads
        scores = [evaluate_task(t, recipe.evaluation, parent.run_id) for t in targets]
        entries = [
            SweepEntry(
                plan=p.config,
                plan_digest=p.plan_digest,
                checkpoint_uri=s.checkpoint_uri,
                perplexity=e.perplexity,
            )
            for p, s, e in zip(plans, students, scores, strict=True)
        ]
        ranking = sorted(range(len(entries)), key=lambda i: entries[i].perplexity)

        if recipe.distillation is not None and recipe.distillation.enabled:
            for rank, index in enumerate(ranking[: sweep.distill_best]):
                distilled = distill_task(source, students[index], recipe.distillation, parent.run_id)
                target = EvalTarget(
                    label=f"distilled-{rank}",
                    checkpoint_digest=distilled.checkpoint_digest,
                    location=distilled.checkpoint_uri,
                )
                evaluation = evaluate_task(target, recipe.evaluation, parent.run_id)
                entries[index] = entries[index].model_copy(
                    update={
                        "distilled_perplexity": evaluation.perplexity,
                        "distilled_mean_acc": evaluation.downstream_mean_acc,
                        "distill_run_id": distilled.mlflow_run_id,
                    }
                )

        ordered = [entries[i] for i in ranking]
        publish(runtime, parent.run_id, ordered)
        return SweepResult(
            mlflow_run_id=parent.run_id, stats_digest=calibration.stats_digest, entries=ordered
        )


def publish(runtime: Runtime, run_id: str, entries: list[SweepEntry]) -> None:
    """The ranked table as a Prefect table artifact and as `sweep/results.json` on the MLflow parent run."""
    rows = [
        {
            "rank": rank,
            "scoring": str(e.plan.scoring),
            "K": e.plan.num_selected,
            "grouping": str(e.plan.grouping),
            "scaling": str(e.plan.scaling),
            "perplexity": round(e.perplexity, 4),
            "distilled_perplexity": e.distilled_perplexity,
        }
        for rank, e in enumerate(entries)
    ]
    create_table_artifact(
        key="sweep-ranking", table=rows, description="Pre-distillation held-out perplexity, best first"
    )
    runtime.client.log_text(
        run_id, json.dumps([e.model_dump(mode="json") for e in entries], indent=2), "sweep/results.json"
    )
    for rank, entry in enumerate(entries):
        runtime.client.log_metric(run_id, "sweep/perplexity", entry.perplexity, step=rank)
    for row in rows:
        print(row)
