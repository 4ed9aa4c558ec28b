"""A new scorer is one file plus one import: a toy scorer registered here (as its own file would
register it) is planned by build_plan, listed by the recipe's JSON schema and the Prefect form,
swept by the sweep grid and named by the CLI help — with no other file edited."""

from __future__ import annotations

import pytest
import torch
from prefect.utilities.callables import parameter_schema
from pydantic import Field
from typer.testing import CliRunner

from flows.cli import app
from flows.convert import convert_flow
from flows.sweep import SweepGrid
from moe2dense_core.plan import PlanConfig, build_plan
from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring import SCORERS, ScoreResult, register_scorer
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_platform.recipe import Recipe, parse_recipe
from tests.fixtures.synthetic_stats import qwen3_moe_config, simulate_expert_stats

E, K_TOP = 8, 2


class LeastSelectedOptions(MethodOptions):
    power: float = Field(1.0, gt=0)
    """Exponent of the score."""


def least_selected(stats: LayerStats, num_selected: int, options: LeastSelectedOptions) -> ScoreResult:
    """toy_e = (1 − n_e / N)^power: keeps the experts the router chose least."""
    return ScoreResult(scores=(1 - stats.counts / stats.num_tokens) ** options.power)


@pytest.fixture
def toy_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """`toy` registered as its file would register it, in a copy of the registry that is put back after."""
    monkeypatch.setattr(SCORERS, "_entries", dict(SCORERS._entries))
    register_scorer("toy", LeastSelectedOptions)(least_selected)


def plan_schema(schema: dict) -> dict:
    definitions = schema.get("$defs") or schema["definitions"]
    return definitions["PlanConfig"]["properties"]["scoring"]


def test_build_plan_runs_the_toy_scorer_with_its_options(toy_scorer: None) -> None:
    config = qwen3_moe_config(num_experts=E, top_k=K_TOP, expert_width=16)
    stats = simulate_expert_stats(config, [0, 1], num_experts=E, top_k=K_TOP, seed=3)
    plan = build_plan(stats, PlanConfig(scoring={"name": "toy", "power": 2.0}))
    for layer in plan.layers:
        counts = stats.layers[layer.layer].counts
        assert layer.kept == sorted(torch.sort(counts, stable=True).indices[:K_TOP].tolist())
        assert layer.scores == ((1 - counts / stats.layers[layer.layer].num_tokens) ** 2).tolist()
    assert plan.config.scoring == LeastSelectedOptions(name="toy", power=2.0)


def test_the_recipe_and_its_prefect_form_list_the_toy_scorer_and_its_options(toy_scorer: None) -> None:
    for schema in (Recipe.model_json_schema(), parameter_schema(convert_flow).model_dump(by_alias=True)):
        names, *objects = plan_schema(schema)["anyOf"]
        assert "toy" in names["enum"]
        toy = next(variant for variant in objects if variant["title"] == "toy")
        assert toy["properties"]["power"]["exclusiveMinimum"] == 0
    recipe = parse_recipe(
        {"name": "t", "source": {"model": "./teacher"}, "plan": {"scoring": {"name": "toy"}}}
    )
    assert recipe.plan.scoring == LeastSelectedOptions(name="toy")


def test_the_sweep_grid_sweeps_the_toy_scorer_by_default(toy_scorer: None) -> None:
    base = PlanConfig()
    assert "toy" in [str(choice) for choice in SweepGrid().scorers]
    configs = SweepGrid(scorers=("toy", {"name": "toy", "power": 3.0}), num_selected=(None, 3)).configs(
        base, K_TOP
    )
    assert [str(config.scoring) for config in configs] == ["toy", "toy(power=3.0)"]  # prune only at K = k


def test_the_cli_help_names_the_toy_scorer(toy_scorer: None) -> None:
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "240", "TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "--scorer" in line)
    assert "random, reap, sf, toy;" in line and "default: all but the controls: " in line
