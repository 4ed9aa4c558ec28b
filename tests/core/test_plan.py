"""build_plan: validation before work, valid plans over the whole method space, JSON round trip, digests."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch
from pydantic import ValidationError

from moe2dense_core.errors import CheckpointError, PlanError, UnsupportedArchitectureError
from moe2dense_core.grouping import GROUPERS
from moe2dense_core.plan import ConversionPlan, PlanConfig, PlanSizes, build_plan, validate_plan_config
from moe2dense_core.registry import MethodOptions
from moe2dense_core.scaling import SCALINGS
from moe2dense_core.scoring import SCORERS
from moe2dense_core.scoring.do_acp import quality_gram
from moe2dense_core.stats.layer_stats import LayerStats
from tests.fixtures.synthetic_stats import (
    qwen3_moe_config,
    random_expert_weights,
    simulate_expert_stats,
)

E, K_TOP, WIDTH = 8, 2, 16
WEIGHTS = random_expert_weights(E, WIDTH, 32, seed=3)


def qwen3_stats(seed: int = 0, **overrides: object):
    config = qwen3_moe_config(num_experts=E, top_k=K_TOP, expert_width=WIDTH, **overrides)
    moe_layers = [i for i in range(config["num_hidden_layers"]) if i not in config["mlp_only_layers"]]
    return simulate_expert_stats(config, moe_layers, num_experts=E, top_k=K_TOP, seed=seed)


def expert_weights(layer: int):
    return WEIGHTS


# ---- validation from the config alone ---------------------------------------------------------------


def test_validate_resolves_defaults_to_pure_pruning() -> None:
    assert validate_plan_config(PlanConfig(), 8, 2) == PlanSizes(num_selected=2, num_groups=2)
    assert validate_plan_config(PlanConfig(num_selected=5, grouping="output_cluster"), 8, 2) == (5, 2)
    assert validate_plan_config(
        PlanConfig(num_selected=5, num_groups=3, grouping="score_balanced"), 8, 2
    ) == (5, 3)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PlanConfig(num_selected=1, grouping="output_cluster"), "num_selected: K = 1 < k = 2"),
        (PlanConfig(num_selected=9, grouping="output_cluster"), "num_selected: K = 9 > E = 8"),
        (
            PlanConfig(num_selected=3, grouping="prune"),
            "num_selected: grouping 'prune' .* K must equal k = 2",
        ),
        (PlanConfig(num_groups=9), "num_groups: 9 dense blocks is outside \\[1, 8\\]"),
    ],
)
def test_validate_rejects_impossible_requests(config: PlanConfig, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate_plan_config(config, 8, 2)


def test_build_plan_rejects_bad_sizes_before_scoring() -> None:
    stats = qwen3_stats()
    stats.layers[0].num_tokens = torch.tensor(
        float("nan"), dtype=torch.float64
    )  # scoring would fail differently
    with pytest.raises(PlanError, match="num_selected: K = 9 > E = 8"):
        build_plan(stats, PlanConfig(num_selected=9, grouping="score_balanced"))


def test_weight_cluster_without_weights_fails_before_scoring() -> None:
    with pytest.raises(PlanError, match="'weight_cluster' needs expert weights"):
        build_plan(qwen3_stats(), PlanConfig(num_selected=4, grouping="weight_cluster"))


def test_statistics_must_fit_the_config() -> None:
    stats = qwen3_stats()
    stats.config = qwen3_moe_config(num_experts=16, top_k=K_TOP, expert_width=WIDTH)
    with pytest.raises(
        PlanError, match="\\(num_experts=8, top_k=2\\) disagree with the config \\(num_experts=16"
    ):
        build_plan(stats, PlanConfig())
    stats = qwen3_stats()
    del stats.layers[1]
    with pytest.raises(
        PlanError, match="statistics cover layers \\[0\\], but the model's MoE layers are \\[0, 1\\]"
    ):
        build_plan(stats, PlanConfig())
    stats = qwen3_stats()
    stats.layers[1] = LayerStats(layer=1, num_experts=E, top_k=K_TOP)
    with pytest.raises(PlanError, match="num_tokens of layer 1 is 0.0: calibrate before planning"):
        build_plan(stats, PlanConfig())


def test_unknown_family_and_broken_config_are_reported_by_the_spec() -> None:
    stats = qwen3_stats()
    stats.model_type = "switch_transformer"
    with pytest.raises(
        UnsupportedArchitectureError, match="unknown MoE family 'switch_transformer'; known: deepseek_v2"
    ):
        build_plan(stats, PlanConfig())
    stats = qwen3_stats()
    del stats.config["moe_intermediate_size"]
    with pytest.raises(CheckpointError, match="moe_intermediate_size"):
        build_plan(stats, PlanConfig())


# ---- the method space ------------------------------------------------------------------------------------


def check_plan(plan: ConversionPlan, config: PlanConfig, num_selected: int) -> None:
    assert [layer.layer for layer in plan.layers] == [0, 1]
    assert plan.target_width == K_TOP * WIDTH and plan.expert_width == WIDTH
    for layer in plan.layers:
        assert len(layer.scores) == E
        assert layer.kept == sorted(layer.kept) and len(set(layer.kept)) == num_selected
        assert len(layer.groups) == K_TOP and all(layer.groups)
        assert sorted(e for g in layer.groups for e in g) == layer.kept
        for group, weights in zip(layer.groups, layer.merge_weights, strict=True):
            assert (
                len(weights) == len(group)
                and min(weights) >= 0
                and sum(weights) == pytest.approx(1.0, abs=1e-12)
            )
        assert len(layer.scales) == K_TOP and all(c > 0 for c in layer.scales)
        assert layer.shared_scale is None
        if config.scaling.name == "uniform":
            assert layer.scales == [1 / K_TOP] * K_TOP


@pytest.mark.parametrize("scoring", SCORERS.names())
def test_every_configuration_gives_a_valid_plan_for_every_k(scoring: str) -> None:
    stats = qwen3_stats(seed=1)
    for grouping, scaling in itertools.product(GROUPERS.names(), SCALINGS.names()):
        sizes = range(K_TOP, E + 1) if GROUPERS.get(grouping).merges else [K_TOP]
        for num_selected in sizes:
            config = PlanConfig(
                scoring=scoring, num_selected=num_selected, grouping=grouping, scaling=scaling
            )
            check_plan(build_plan(stats, config, expert_weights=expert_weights), config, num_selected)


def test_sf_prune_keeps_the_most_selected_experts() -> None:
    stats = qwen3_stats(seed=2)
    plan = build_plan(stats, PlanConfig(scoring="sf", grouping="prune"))
    for layer in plan.layers:
        counts = stats.layers[layer.layer].counts
        assert layer.kept == sorted(torch.sort(counts, descending=True, stable=True).indices[:K_TOP].tolist())
        assert layer.scores == (counts / stats.layers[layer.layer].num_tokens).tolist()
        assert layer.merge_weights == [[1.0], [1.0]]


def test_router_mass_and_proportional_scales_reach_the_plan() -> None:
    stats = qwen3_stats(seed=3)
    plan = build_plan(stats, PlanConfig(scoring="acp", scaling={"name": "uniform", "router_mass": True}))
    layer_stats = stats.layers[0]
    assert (
        plan.layers[0].scales
        == [float(layer_stats.weight_sums.sum() / layer_stats.num_tokens) / K_TOP] * K_TOP
    )
    proportional = build_plan(stats, PlanConfig(scoring="acp", scaling="proportional")).layers[0]
    expected = [
        float(layer_stats.weight_sums[g].sum() / layer_stats.counts[g].sum()) for g in proportional.groups
    ]
    assert proportional.scales == pytest.approx(expected, rel=1e-15)


def test_each_kind_of_method_has_one_call_signature() -> None:
    signatures = {
        tuple(inspect.signature(method.fn).parameters)
        for registry in (SCORERS, GROUPERS, SCALINGS)
        for method in registry.entries()
    }
    assert signatures == {
        ("stats", "num_selected", "options"),
        ("request", "options"),
        ("stats", "groups", "options"),
    }
    for registry in (SCORERS, GROUPERS, SCALINGS):
        for method in registry.entries():
            assert issubclass(method.options, MethodOptions) and method.defaults().name == method.name


def test_do_acp_ridge_reaches_the_scorer() -> None:
    """With λ ≫ M, log det(M_S + λI) ≈ |S| log λ + tr(M_S)/λ: do_acp keeps the largest diag M, like top-K by acp."""
    stats = qwen3_stats(seed=8)  # a seed where the default ridge picks a different set
    default = build_plan(stats, PlanConfig(scoring="do_acp", num_selected=4, grouping="output_cluster"))
    huge_ridge = build_plan(
        stats,
        PlanConfig(scoring={"name": "do_acp", "ridge": 1e12}, num_selected=4, grouping="output_cluster"),
    )
    by_diagonal = [
        sorted(torch.topk(torch.diagonal(quality_gram(stats.layers[i])), 4).indices.tolist()) for i in (0, 1)
    ]
    assert [layer.kept for layer in huge_ridge.layers] == by_diagonal
    assert [layer.kept for layer in default.layers] != by_diagonal


def random_kept(stats, seed: int) -> list[list[int]]:
    return [
        layer.kept for layer in build_plan(stats, PlanConfig(scoring={"name": "random", "seed": seed})).layers
    ]


def test_random_seed_reaches_the_scorer() -> None:
    stats = qwen3_stats(seed=5)
    kept = {seed: random_kept(stats, seed) for seed in range(6)}
    assert (
        kept[0]
        == random_kept(stats, 0)
        == [layer.kept for layer in build_plan(stats, PlanConfig(scoring="random")).layers]
    )
    assert len({str(v) for v in kept.values()}) > 1


# ---- methods and their options in the config ---------------------------------------------------------------


def test_a_bare_name_is_the_method_with_default_options() -> None:
    assert PlanConfig(scoring="do_acp") == PlanConfig(scoring={"name": "do_acp"}) == PlanConfig()
    config = PlanConfig(
        scoring={"name": "do_acp", "exhaustive_limit": 5}, scaling={"name": "uniform", "router_mass": True}
    )
    assert (config.scoring.exhaustive_limit, config.scoring.exchange, config.scaling.router_mass) == (
        5,
        True,
        True,
    )
    assert config.model_dump(mode="json")["scoring"] == {
        "name": "do_acp",
        "exchange": True,
        "ridge": None,
        "exhaustive_limit": 5,
    }
    assert (
        PlanConfig.model_validate_json(config.model_dump_json())
        == config
        == PlanConfig(**config.model_dump())
    )
    assert (str(config.scoring), str(config.grouping), str(config.scaling)) == (
        "do_acp(exhaustive_limit=5)",
        "prune",
        "uniform(router_mass=True)",
    )


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"scoring": "magic"},
            [(("scoring",), "Input should be 'acp', 'cp', 'do_acp', 'ean', 'pp', 'random'")],
        ),
        (
            {"grouping": {"name": "kmeans"}},
            [(("grouping", "name"), "Input should be 'output_cluster', 'prune'")],
        ),
        ({"scoring": {"ridge": 1.0}}, [(("scoring", "name"), "Field required")]),
        (
            {"scoring": {"name": "do_acp", "ridge": 0.0, "exchange": 1, "limit": 3}},
            [
                (("scoring", "exchange"), "Input should be a valid boolean"),
                (("scoring", "ridge"), "Input should be greater than 0"),
                (
                    ("scoring", "limit"),
                    "Value error, unknown key (allowed: name, exchange, ridge, exhaustive_limit)",
                ),
            ],
        ),
        (
            {"scoring": {"name": "do_acp", "exhaustive_limit": True}},
            [(("scoring", "exhaustive_limit"), "Input should be a valid integer")],
        ),
        (
            {"scoring": {"name": "random", "seed": 1.5}},
            [(("scoring", "seed"), "Input should be a valid integer")],
        ),
        (
            {"scoring": {"name": "do_acp", "ridge": float("inf")}},
            [(("scoring", "ridge"), "Input should be a finite number")],
        ),
        (
            {"scaling": {"name": "proportional", "router_mass": True}},
            [(("scaling", "router_mass"), "Value error, unknown key (allowed: name)")],
        ),
        (
            {"scaling": 3},
            [
                (
                    ("scaling",),
                    "Value error, Input should be a scaling name or a mapping with its `name` and options",
                )
            ],
        ),
    ],
)
def test_a_bad_method_choice_is_refused_at_its_key(fields: dict, errors: list[tuple[tuple, str]]) -> None:
    with pytest.raises(ValidationError) as refused:
        PlanConfig(**fields)
    found = sorted((e["loc"], e["msg"]) for e in refused.value.errors())
    assert len(found) == len(errors)
    for (loc, message), (expected_loc, expected) in zip(found, sorted(errors), strict=True):
        assert loc == expected_loc and message.startswith(expected), (loc, message)


@pytest.mark.parametrize(
    ("flat", "new_place"),
    [
        ({"router_mass": True}, "scaling: {name: uniform, router_mass: …}"),
        ({"do_acp_ridge": 0.5}, "scoring: {name: do_acp, ridge: …}"),
        ({"seed": 3}, "scoring: {name: random, seed: …}"),
    ],
)
def test_a_flat_option_of_schema_1_is_refused_naming_its_new_place(flat: dict, new_place: str) -> None:
    with pytest.raises(ValidationError) as refused:
        PlanConfig(**flat)
    [error] = refused.value.errors()
    assert (
        error["loc"] == tuple(flat)
        and error["msg"] == f"Value error, is now an option of its method, written {new_place}"
    )


def test_every_kind_lists_its_registered_methods_in_the_json_schema() -> None:
    properties = PlanConfig.model_json_schema()["properties"]
    for field, registry in (("scoring", SCORERS), ("grouping", GROUPERS), ("scaling", SCALINGS)):
        names, *objects = properties[field]["anyOf"]
        assert names["enum"] == registry.names() == [o["properties"]["name"]["const"] for o in objects]
    do_acp = next(o for o in properties["scoring"]["anyOf"][1:] if o["title"] == "do_acp")
    assert set(do_acp["properties"]) == {"name", "exchange", "ridge", "exhaustive_limit"}
    assert do_acp["properties"]["exhaustive_limit"] == {
        "default": 20000,
        "description": "Search every K-subset exactly when there are at most this many (C(E, K)) [defined here].",
        "minimum": 0,
        "title": "Exhaustive Limit",
        "type": "integer",
    }
    assert properties["scoring"]["default"] == "do_acp" and do_acp["additionalProperties"] is False


# ---- widths and shared experts -------------------------------------------------------------------------------


def test_target_width_is_at_least_the_teacher_dense_width() -> None:
    stats = qwen3_stats(num_hidden_layers=3, mlp_only_layers=[0], intermediate_size=100)
    plan = build_plan(stats, PlanConfig())
    assert [layer.layer for layer in plan.layers] == [1, 2]
    assert plan.target_width == 100


def deepseek_v2_config() -> dict:
    return {
        "model_type": "deepseek_v2",
        "n_routed_experts": E,
        "num_experts_per_tok": K_TOP,
        "n_shared_experts": 2,
        "moe_intermediate_size": WIDTH,
        "intermediate_size": 40,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
    }


def test_deepseek_plan_has_unit_shared_scale_and_shared_width() -> None:
    stats = simulate_expert_stats(deepseek_v2_config(), [1, 2], num_experts=E, top_k=K_TOP, seed=6)
    plan = build_plan(stats, PlanConfig(scoring="do_acp"))
    assert plan.target_width == max(K_TOP * WIDTH + 2 * WIDTH, 40) == 64
    assert [layer.shared_scale for layer in plan.layers] == [1.0, 1.0]


def test_qwen2_moe_plan_folds_the_mean_shared_gate() -> None:
    config = qwen3_moe_config(
        num_experts=E, top_k=K_TOP, expert_width=WIDTH, shared_expert_intermediate_size=24
    )
    config["model_type"] = "qwen2_moe"
    stats = simulate_expert_stats(config, [0, 1], num_experts=E, top_k=K_TOP, seed=7, shared_gate=True)
    plan = build_plan(stats, PlanConfig(scoring="sf"))
    assert plan.target_width == K_TOP * WIDTH + 24
    for layer in plan.layers:
        layer_stats = stats.layers[layer.layer]
        assert 0 < layer.shared_scale < 1
        assert layer.shared_scale == float(layer_stats.shared_gate_sum) / float(layer_stats.num_tokens)


# ---- the plan as a value ---------------------------------------------------------------------------------


def test_plan_round_trips_through_json_and_its_digest_is_stable() -> None:
    stats = qwen3_stats(seed=8)
    config = PlanConfig(scoring="do_acp", num_selected=5, grouping="weight_cluster", scaling="proportional")
    plan = build_plan(stats, config, expert_weights=expert_weights)
    again = build_plan(stats, config, expert_weights=expert_weights)
    restored = ConversionPlan.from_json(plan.to_json())
    assert restored == plan and restored.digest() == plan.digest() == again.digest()
    assert restored.layers[0].scores == plan.layers[0].scores  # float64 values survive JSON exactly
    assert (
        build_plan(
            stats, config.model_copy(update={"num_selected": 6}), expert_weights=expert_weights
        ).digest()
        != plan.digest()
    )


@pytest.mark.parametrize("version", [99, 3, 0, "2", "1", 1.0, True, None])
def test_a_plan_of_another_schema_version_is_refused_on_load(version: object) -> None:
    data = json.loads(build_plan(qwen3_stats(seed=8), PlanConfig()).to_json())
    data["schema_version"] = version
    with pytest.raises(PlanError, match=rf"ConversionPlan: schema_version {version!r} is not supported"):
        ConversionPlan.from_json(json.dumps(data))


def test_plan_records_the_statistics_digest() -> None:
    stats = qwen3_stats(seed=9)
    plan = build_plan(stats, PlanConfig())
    assert plan.stats_digest == stats.digest() and len(plan.stats_digest) == 64
    assert build_plan(qwen3_stats(seed=10), PlanConfig()).stats_digest != plan.stats_digest


def as_version_1(plan: ConversionPlan) -> dict:
    """The plan as moe2dense wrote it with schema_version 1: method names, every option a flat field."""
    data = json.loads(plan.to_json())
    config = data["config"]
    scoring, scaling = config["scoring"], config["scaling"]
    data["schema_version"] = 1
    data["config"] = {
        "scoring": scoring["name"],
        "num_selected": config["num_selected"],
        "grouping": config["grouping"]["name"],
        "scaling": scaling["name"],
        "num_groups": config["num_groups"],
        "router_mass": scaling.get("router_mass", False),
        "do_acp_exchange": scoring.get("exchange", True),
        "do_acp_ridge": scoring.get("ridge"),
        "do_acp_exhaustive_limit": scoring.get("exhaustive_limit", 20_000),
        "seed": scoring.get("seed", 0),
    }
    return data


@pytest.mark.parametrize(
    "config",
    [
        PlanConfig(
            scoring={"name": "do_acp", "ridge": 0.25, "exchange": False, "exhaustive_limit": 3},
            num_selected=3,
            grouping="output_cluster",
            scaling={"name": "uniform", "router_mass": True},
        ),
        PlanConfig(scoring={"name": "random", "seed": 4}, scaling="proportional"),
    ],
)
def test_a_version_1_plan_loads_with_its_options_in_their_methods(config: PlanConfig) -> None:
    plan = build_plan(qwen3_stats(seed=8), config)
    old = as_version_1(plan)
    assert "router_mass" in old["config"] and old["config"]["scoring"] == config.scoring.name
    loaded = ConversionPlan.from_json(json.dumps(old))
    assert loaded == plan and loaded.schema_version == 2 and loaded.digest() == plan.digest()
