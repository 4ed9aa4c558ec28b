"""flows/sweep.py against the real servers: one calibration for the whole grid, the best one distilled."""

from __future__ import annotations

import pytest

from flows.sweep import SweepGrid, SweepRecipe, sweep_flow
from tasks.tracking import TAG_STAGE, tracking_client

pytestmark = pytest.mark.integration


def test_sweep_calibrates_once_and_ranks_every_configuration(team_stack, tiny_teacher):
    recipe = tiny_teacher.recipe(
        "name=sweep-it", "calibration.seed=7", "distillation.train.seed=7"
    )  # a calibration no other test cached
    grid = SweepGrid(
        scorers=("sf", "do_acp", "random"), num_selected=(None, 3), groupings=("prune", "output_cluster")
    )
    result = sweep_flow(SweepRecipe(recipe=recipe, grid=grid, distill_best=1))

    # prune with K=3 ≠ k=2 is outside the design space: 3 scorers × (2 groupers at K=k + 1 merging grouper at K=3)
    assert len(result.entries) == 9
    perplexities = [e.perplexity for e in result.entries]
    assert perplexities == sorted(perplexities)
    assert result.entries[0].distilled_perplexity is not None
    assert all(e.distilled_perplexity is None for e in result.entries[1:])

    client = tracking_client(team_stack)
    parent = client.get_run(result.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    stages = [run.data.tags[TAG_STAGE] for run in children]
    assert stages.count("calibrate") == 1
    assert stages.count("plan") == 9 and stages.count("assemble") == 9 and stages.count("distill") == 1
    assert {e.plan.scoring for e in result.entries} == {"sf", "do_acp", "random"}
