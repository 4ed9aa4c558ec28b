"""flows/sweep.py: the grid's design space (from the registries and the plan's one K-and-k rule), and
against the real servers one calibration for the whole grid, the best one distilled."""

from __future__ import annotations

import pytest

from flows.sweep import SWEEP_WORKERS, SweepGrid, SweepRecipe, sweep_flow
from moe2dense_core.errors import PlanError
from moe2dense_core.plan import PlanConfig, validate_plan_config
from moe2dense_core.scoring import compared_scorers
from moe2dense_platform.tracking import TAG_STAGE, tracking_client


def test_the_default_grid_sweeps_every_compared_scorer_with_the_recipe_plan_methods() -> None:
    base = PlanConfig(scoring="sf", grouping="prune", scaling={"name": "uniform", "router_mass": True})
    configs = SweepGrid().configs(base, top_k=2)
    assert [
        config.scoring.name for config in configs
    ] == compared_scorers() and "random" not in compared_scorers()
    assert {(str(c.grouping), str(c.scaling), c.num_selected) for c in configs} == {
        ("prune", "uniform(router_mass=True)", None)
    }


def test_the_grid_keeps_exactly_the_configs_whose_grouping_fits_k() -> None:
    """k is the plan's num_groups when set (here 3; the teacher's top-k is 2): `prune` fits only K = k = 3.
    The grid drops only what its grouping cannot be; K = 2 < k = 3 is left to the flow's validation."""
    base = PlanConfig(num_groups=3)
    grid = SweepGrid(scorers=("sf",), num_selected=(None, 2, 3, 4), groupings=("prune", "score_balanced"))
    configs = grid.configs(base, top_k=2)
    assert [(c.grouping.name, c.num_selected) for c in configs] == [
        ("prune", None),
        ("score_balanced", None),
        ("score_balanced", 2),
        ("prune", 3),
        ("score_balanced", 3),
        ("score_balanced", 4),
    ]
    for config in configs:
        if config.num_selected == 2:
            with pytest.raises(PlanError, match="num_selected: K = 2 < k = 3"):
                validate_plan_config(config, num_experts=8, top_k=2)
        else:
            assert validate_plan_config(config, num_experts=8, top_k=2).num_groups == 3


@pytest.mark.integration
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
    assert {e.plan.scoring.name for e in result.entries} == {"sf", "do_acp", "random"}

    # the grid's stage tasks run at most SWEEP_WORKERS at a time (unbounded, 128 plans exhaust SQLite's pool)
    stage_runs = [run for run in children if run.data.tags[TAG_STAGE] in ("plan", "assemble")]
    assert most_at_once([(run.info.start_time, run.info.end_time) for run in stage_runs]) <= SWEEP_WORKERS


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of [start, end) intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, change in events:
        open_now += change
        most = max(most, open_now)
    return most
