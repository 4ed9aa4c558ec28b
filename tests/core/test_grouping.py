"""Groupers: valid partitions for every K, determinism, permutation equivariance, hand examples, merge weights."""

from __future__ import annotations

import pytest
import torch

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping import (
    GROUPERS,
    Grouper,
    GroupingRequest,
    get_grouper,
    grouper_names,
    score_weighted,
)
from moe2dense_core.grouping.seeded_assignment import assign_to_seeds, cosine_from_gram
from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring import get_scorer, rank_experts, select_top_k
from tests.fixtures.synthetic_stats import permute_layer_stats, random_expert_weights, simulate_layer_stats

NUM_EXPERTS, TOP_K = 8, 3
MERGING_GROUPERS = ["weight_cluster", "output_cluster", "router_cluster", "score_balanced"]
WEIGHTS = random_expert_weights(NUM_EXPERTS, 4, 6, seed=11)


def request_for(stats, num_selected: int, weights=WEIGHTS) -> GroupingRequest:
    scores = get_scorer("acp")(stats, num_selected).scores
    kept = select_top_k(scores, num_selected)
    return GroupingRequest(stats, rank_experts(scores, kept), TOP_K, lambda layer: weights)


def permuted_weights(perm: list[int]):
    return WEIGHTS.select(perm)


def test_registry_lists_every_method() -> None:
    assert grouper_names() == sorted(["prune", *MERGING_GROUPERS])
    assert [g.name for g in GROUPERS.entries() if not g.merges] == ["prune"]
    assert [g.name for g in GROUPERS.entries() if g.needs_weights] == ["weight_cluster"]
    with pytest.raises(PlanError, match="unknown grouper 'kmeans'; known: output_cluster, prune"):
        get_grouper("kmeans")


@pytest.mark.parametrize("name", MERGING_GROUPERS)
def test_groupers_give_k_nonempty_groups_covering_the_kept_experts_for_every_k(name: str) -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=1)
    for num_selected in range(TOP_K, NUM_EXPERTS + 1):
        request = request_for(stats, num_selected)
        groups = get_grouper(name)(request)
        assert len(groups) == TOP_K and all(groups)
        assert sorted(e for g in groups for e in g) == sorted(request.ranked)
        assert groups == get_grouper(name)(request_for(stats, num_selected))  # deterministic


@pytest.mark.parametrize("name", MERGING_GROUPERS)
def test_groupers_are_permutation_equivariant(name: str) -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=2)
    perm = [6, 2, 7, 0, 5, 3, 1, 4]
    for num_selected in range(TOP_K, NUM_EXPERTS + 1):
        original = get_grouper(name)(request_for(stats, num_selected))
        permuted = get_grouper(name)(
            request_for(permute_layer_stats(stats, perm), num_selected, weights=permuted_weights(perm))
        )
        assert [[perm[e] for e in g] for g in permuted] == original


def test_prune_keeps_each_expert_alone_and_so_needs_k_equal_k() -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=3)
    request = request_for(stats, TOP_K)
    assert get_grouper("prune")(request) == [[e] for e in request.ranked]
    with pytest.raises(PlanError, match="grouping 'prune' on layer 0: .* is not 3 non-empty groups"):
        get_grouper("prune")(request_for(stats, 4))  # build_plan refuses this before scoring


def test_seeded_assignment_joins_the_most_similar_seed() -> None:
    ranked = [4, 0, 2, 1, 3]  # seeds 4 and 0
    similarity = torch.tensor(
        [
            [1.0, 0.1, 0.0, 0.0, 0.0],
            [0.1, 1.0, 0.0, 0.0, 0.0],
            [0.2, 0.9, 1.0, 0.0, 0.0],  # expert 2 → seed 0
            [0.8, 0.3, 0.0, 1.0, 0.0],  # expert 1 → seed 4
            [0.5, 0.5, 0.0, 0.0, 1.0],  # expert 3: tie → the higher-ranked seed 4
        ],
        dtype=torch.float64,
    )
    assert assign_to_seeds(ranked, 2, similarity) == [[4, 1, 3], [0, 2]]


def test_cosine_from_gram_is_zero_for_a_silent_expert() -> None:
    gram = torch.tensor([[4.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cosine_from_gram(gram), expected, rtol=0, atol=1e-15)


def test_score_balanced_deals_in_serpentine_order() -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=4)
    ranked = [7, 3, 5, 0, 1, 6, 2]
    groups = get_grouper("score_balanced")(GroupingRequest(stats, ranked, 3))
    # round 0 deals 7, 3, 5 to groups 0, 1, 2; round 1 deals 0, 1, 6 to groups 2, 1, 0; round 2 deals 2 to group 0
    assert groups == [[7, 6, 2], [3, 1], [5, 0]]


def test_weight_cluster_puts_a_scaled_copy_with_its_original() -> None:
    base = random_expert_weights(5, 4, 6, seed=5)
    copy_of_3 = type(base)(gate=base.gate.clone(), up=base.up.clone(), down=base.down.clone())
    copy_of_3.gate[4], copy_of_3.up[4], copy_of_3.down[4] = 2 * base.gate[3], 2 * base.up[3], 2 * base.down[3]
    stats = simulate_layer_stats(0, 5, 2, seed=5)
    groups = get_grouper("weight_cluster")(
        GroupingRequest(stats, [1, 3, 0, 4, 2], 2, lambda layer: copy_of_3)
    )
    assert groups[1][0] == 3 and 4 in groups[1]  # seeds are 1 and 3; the copy of 3 joins 3


def test_output_cluster_groups_experts_with_proportional_outputs() -> None:
    stats = simulate_layer_stats(0, 4, 2, seed=6)
    features = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 2.0, 0.1], [1.0, 0.1, 0]], dtype=torch.float64)
    stats.gram.copy_(features @ features.T)
    groups = get_grouper("output_cluster")(GroupingRequest(stats, [0, 1, 2, 3], 2))
    assert groups == [[0, 3], [1, 2]]


def test_router_cluster_groups_experts_with_similar_router_profiles() -> None:
    stats = simulate_layer_stats(0, 4, 2, seed=7)
    profiles = torch.tensor(
        [[0.9, 0.1, 0.0], [0.0, 0.1, 0.9], [0.8, 0.2, 0.0], [0.1, 0.0, 0.8]], dtype=torch.float64
    )
    stats.router_prob_gram.copy_(profiles @ profiles.T)
    groups = get_grouper("router_cluster")(GroupingRequest(stats, [0, 1, 2, 3], 2))
    assert groups == [[0, 2], [1, 3]]


def test_weight_cluster_needs_weights_of_every_expert() -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=8)
    with pytest.raises(PlanError, match="needs expert weights"):
        get_grouper("weight_cluster")(GroupingRequest(stats, [0, 1, 2, 3], 3))
    too_few = random_expert_weights(NUM_EXPERTS - 1, 4, 6)
    with pytest.raises(PlanError, match="expert_weights\\(0\\): 7 experts, but the statistics have 8"):
        get_grouper("weight_cluster")(GroupingRequest(stats, [0, 1, 2, 3], 3, lambda layer: too_few))


def test_registered_grouper_contract_rejects_a_wrong_partition() -> None:
    stats = simulate_layer_stats(0, NUM_EXPERTS, TOP_K, seed=9)
    request = GroupingRequest(stats, [0, 1, 2, 3], 2)
    for bad in ([[0, 1, 2, 3]], [[0, 1], [2]], [[0, 1], [2, 3, 3]], [[0, 1, 2, 3], []]):
        with pytest.raises(PlanError, match="is not 2 non-empty groups partitioning"):
            Grouper(name="broken", fn=lambda r, options, bad=bad: bad, options=MethodOptions)(request)


def test_merge_weights_are_score_weighted_with_guards() -> None:
    scores = torch.tensor([3.0, 1.0, 0.0, 0.0, -2.0, 5.0], dtype=torch.float64)
    weights = score_weighted([[0, 1], [2, 3], [4, 1], [5]], scores)
    assert weights == [[0.75, 0.25], [0.5, 0.5], [0.0, 1.0], [1.0]]
