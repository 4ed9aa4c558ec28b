"""build_plan: validation before work, valid plans over the whole method space, JSON round trip, digests."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch

from moe2dense_core.errors import CheckpointError, PlanError, UnsupportedArchitectureError
from moe2dense_core.plan import ConversionPlan, PlanConfig, PlanSizes, build_plan, validate_plan_config
from moe2dense_core.scaling import get_scaling, scaling_names
from moe2dense_core.scoring import get_scorer, scorer_names
from moe2dense_core.scoring.do_acp import quality_gram
from moe2dense_core.stats.layer_stats import LayerStats
from tests.fixtures.synthetic_stats import (
    qwen3_moe_config,
    random_expert_weights,
    simulate_expert_stats,
)

E, K_TOP, WIDTH = 8, 2, 16
SCORERS = ["sf", "pp", "cp", "ean", "reap", "acp", "do_acp", "random"]
GROUPERS = ["prune", "weight_cluster", "output_cluster", "router_cluster", "score_balanced"]
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
        (
            PlanConfig(scaling="proportional", router_mass=True),
            "router_mass: applies only to scaling='uniform'",
        ),
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
    with pytest.raises(UnsupportedArchitectureError, match="supported: deepseek_v2"):
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
        if config.scaling == "uniform":
            assert layer.scales == [1 / K_TOP] * K_TOP


@pytest.mark.parametrize("scoring", SCORERS)
def test_every_configuration_gives_a_valid_plan_for_every_k(scoring: str) -> None:
    stats = qwen3_stats(seed=1)
    for grouping, scaling in itertools.product(GROUPERS, ["uniform", "proportional"]):
        sizes = [K_TOP] if grouping == "prune" else range(K_TOP, E + 1)
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
    plan = build_plan(stats, PlanConfig(scoring="acp", router_mass=True))
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


def test_method_options_name_plan_config_fields_and_function_keywords() -> None:
    methods = [get_scorer(name) for name in scorer_names()] + [get_scaling(name) for name in scaling_names()]
    assert {o for m in methods for o in m.options.values()} == {
        "seed",
        "do_acp_ridge",
        "do_acp_exchange",
        "do_acp_exhaustive_limit",
        "router_mass",
    }
    for method in methods:
        parameters = inspect.signature(method.fn).parameters
        for option, field_name in method.options.items():
            assert field_name in PlanConfig.model_fields
            assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY


def test_do_acp_ridge_reaches_the_scorer() -> None:
    """With λ ≫ M, log det(M_S + λI) ≈ |S| log λ + tr(M_S)/λ: do_acp keeps the largest diag M, like top-K by acp."""
    stats = qwen3_stats(seed=8)  # a seed where the default ridge picks a different set
    config = PlanConfig(scoring="do_acp", num_selected=4, grouping="output_cluster")
    default = build_plan(stats, config)
    huge_ridge = build_plan(stats, config.model_copy(update={"do_acp_ridge": 1e12}))
    by_diagonal = [
        sorted(torch.topk(torch.diagonal(quality_gram(stats.layers[i])), 4).indices.tolist()) for i in (0, 1)
    ]
    assert [layer.kept for layer in huge_ridge.layers] == by_diagonal
    assert [layer.kept for layer in default.layers] != by_diagonal


def test_random_seed_reaches_the_scorer() -> None:
    stats = qwen3_stats(seed=5)
    kept = {
        seed: [layer.kept for layer in build_plan(stats, PlanConfig(scoring="random", seed=seed)).layers]
        for seed in range(6)
    }
    assert kept[0] == [layer.kept for layer in build_plan(stats, PlanConfig(scoring="random", seed=0)).layers]
    assert len({str(v) for v in kept.values()}) > 1


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


@pytest.mark.parametrize("version", [99, 0, "1", None])
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
