"""Scorers: hand numbers, permutation equivariance, determinism, selection and the registry."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.errors import PlanError
from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring import (
    SCORERS,
    Scorer,
    ScoreResult,
    compared_scorers,
    get_scorer,
    rank_experts,
    scorer_names,
    select_top_k,
)
from moe2dense_core.stats.layer_stats import LayerStats
from tests.fixtures.synthetic_stats import permute_layer_stats, simulate_layer_stats

RANKING_SCORERS = ["sf", "pp", "cp", "ean", "reap", "acp"]


def hand_stats() -> LayerStats:
    """E = 3 experts, N = 4 tokens, top-1; expert 2 never selected."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return LayerStats(
        layer=0,
        num_experts=3,
        top_k=1,
        num_tokens=torch.tensor(4.0, dtype=torch.float64),
        counts=t(3.0, 1.0, 0.0),
        prob_sums=t(2.0, 1.2, 0.8),
        prob_sums_selected=t(1.8, 0.7, 0.0),
        weight_sums=t(3.0, 1.0, 0.0),
        output_sq_norm_sums=t(16.0, 36.0, 4.0),
        gram=torch.diag(t(16.0, 36.0, 4.0)),
        routed_norm_sums=t(6.0, 5.0, 0.0),
        routed_weighted_norm_sums=t(4.5, 2.0, 0.0),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sf", [3 / 4, 1 / 4, 0.0]),
        ("pp", [2.0 / 4, 1.2 / 4, 0.8 / 4]),
        ("cp", [1.8 / 3, 0.7 / 1, 0.0]),
        ("ean", [6.0 / 3, 5.0 / 1, 0.0]),
        ("reap", [4.5 / 3, 2.0 / 1, 0.0]),
        ("acp", [0.6 * math.sqrt(16 / 4), 0.7 * math.sqrt(36 / 4), 0.0]),
    ],
)
def test_scorer_matches_hand_numbers(name: str, expected: list[float]) -> None:
    result = get_scorer(name)(hand_stats(), 1)
    assert result.selected == select_top_k(result.scores, 1)
    assert result.scores.dtype == torch.float64
    torch.testing.assert_close(result.scores, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", RANKING_SCORERS)
def test_ranking_scorer_is_permutation_equivariant(name: str) -> None:
    stats = simulate_layer_stats(0, 8, 2, seed=3)
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    original = get_scorer(name)(stats, 3).scores
    permuted = get_scorer(name)(permute_layer_stats(stats, perm), 3).scores
    torch.testing.assert_close(permuted, original[perm], rtol=1e-12, atol=0)


@pytest.mark.parametrize("exhaustive_limit", [20_000, 0])
def test_do_acp_is_permutation_equivariant(exhaustive_limit: int) -> None:
    stats = simulate_layer_stats(0, 10, 2, seed=4)
    perm = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]
    for k in range(1, 10):
        options = SCORERS.choose({"name": "do_acp", "exhaustive_limit": exhaustive_limit})
        original = get_scorer("do_acp")(stats, k, options)
        permuted = get_scorer("do_acp")(permute_layer_stats(stats, perm), k, options)
        assert sorted(perm[j] for j in permuted.selected) == original.selected
        torch.testing.assert_close(permuted.scores, original.scores[perm], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", sorted(set(scorer_names())))
def test_every_scorer_is_deterministic_and_float64(name: str) -> None:
    stats = simulate_layer_stats(1, 8, 2, seed=5)
    first, second = get_scorer(name)(stats, 4), get_scorer(name)(stats, 4)
    assert first.scores.dtype == torch.float64 and first.scores.shape == (8,)
    assert torch.equal(first.scores, second.scores) and first.selected == second.selected


def test_random_scorer_depends_on_seed_and_layer_only() -> None:
    def random(stats: LayerStats, seed: int) -> torch.Tensor:
        return get_scorer("random")(stats, 4, SCORERS.choose({"name": "random", "seed": seed})).scores

    layer0, layer1 = simulate_layer_stats(0, 16, 2, seed=1), simulate_layer_stats(1, 16, 2, seed=1)
    other_stats_same_layer = simulate_layer_stats(0, 16, 2, seed=9)
    assert torch.equal(random(layer0, 7), random(other_stats_same_layer, 7))
    assert not torch.equal(random(layer0, 7), random(layer1, 7))
    assert not torch.equal(random(layer0, 7), random(layer0, 8))


def test_registry_lists_every_method_and_rejects_unknown_names() -> None:
    assert scorer_names() == sorted(["sf", "pp", "cp", "ean", "reap", "acp", "do_acp", "random"])
    assert compared_scorers() == sorted(["sf", "pp", "cp", "ean", "reap", "acp", "do_acp"])  # not the control
    with pytest.raises(PlanError, match="unknown scorer 'frequency'.*acp, cp, do_acp"):
        get_scorer("frequency")


def test_score_result_requires_float64_vector() -> None:
    with pytest.raises(ValueError, match="ScoreResult.scores"):
        ScoreResult(scores=torch.zeros(3, dtype=torch.float32))


def test_selection_takes_top_k_with_ties_to_lower_index() -> None:
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9], dtype=torch.float64)
    assert rank_experts(scores) == [1, 4, 0, 2, 3]
    assert select_top_k(scores, 3) == [0, 1, 4]
    assert rank_experts(scores, [3, 2, 0]) == [0, 2, 3]


def test_selection_rejects_nan() -> None:
    with pytest.raises(PlanError, match="NaN for experts \\[1\\]"):
        rank_experts(torch.tensor([0.1, float("nan")], dtype=torch.float64))


@pytest.mark.parametrize(
    "result",
    [
        ScoreResult(scores=torch.arange(4, dtype=torch.float64), selected=[0, 0]),  # an expert twice
        ScoreResult(scores=torch.arange(4, dtype=torch.float64), selected=[1, 4]),  # outside [0, E)
        ScoreResult(scores=torch.arange(4, dtype=torch.float64), selected=[1]),  # not K experts
        ScoreResult(scores=torch.arange(3, dtype=torch.float64)),  # not one score per expert
    ],
)
def test_registered_scorer_contract_rejects_a_wrong_result(result: ScoreResult) -> None:
    broken = Scorer(name="broken", fn=lambda stats, num_selected, options: result, options=MethodOptions)
    with pytest.raises(PlanError, match="scorer 'broken' on layer 0: .* not 4 scores and 2 distinct experts"):
        broken(simulate_layer_stats(0, 4, 2, seed=1), 2)


def test_scorers_needing_token_count_refuse_empty_statistics() -> None:
    empty = LayerStats(layer=2, num_experts=4, top_k=2)
    for name in ["sf", "pp", "acp", "do_acp"]:
        with pytest.raises(PlanError, match="num_tokens of layer 2"):
            get_scorer(name)(empty, 2)
