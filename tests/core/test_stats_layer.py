"""LayerStats: every accumulator against hand-computed numbers; merge, state dict, input errors."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.stats.layer_stats import SUM_FIELDS, LayerStats, StatsError

# 3 tokens, E = 3 experts, top-2, hidden H = 2.
PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]], dtype=torch.float64)
TOPK_INDICES = torch.tensor([[0, 1], [1, 2], [2, 0]])
TOPK_WEIGHTS = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]])
OUTPUTS = torch.tensor(  # [E, T, H]
    [
        [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]],  # expert 0: norms 1, 2, 5
        [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]],  # expert 1: norms 1, √2, 0
        [[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]],  # expert 2: norms 2, 0, 1
    ]
)
SHARED_GATE = torch.tensor([0.5, 0.25, 1.0])


def hand_example() -> LayerStats:
    stats = LayerStats(layer=4, num_experts=3, top_k=2)
    stats.update(PROBS, TOPK_WEIGHTS, TOPK_INDICES, OUTPUTS, SHARED_GATE)
    return stats


def test_every_field_matches_hand_computed_numbers() -> None:
    s = hand_example()
    r2 = math.sqrt(2.0)
    expected = {
        "num_tokens": 3.0,
        # expert 0 chosen by tokens 0, 2; expert 1 by 0, 1; expert 2 by 1, 2
        "counts": [2.0, 2.0, 2.0],
        "prob_sums": [0.5 + 0.1 + 0.2, 0.3 + 0.6 + 0.2, 0.2 + 0.3 + 0.6],
        "prob_sums_selected": [0.5 + 0.2, 0.3 + 0.6, 0.3 + 0.6],
        "weight_sums": [0.6 + 0.2, 0.4 + 0.7, 0.3 + 0.8],
        "output_sq_norm_sums": [1 + 4 + 25, 1 + 2 + 0, 4 + 0 + 1],
        # G01 = 0 + (0·1 + 2·1) + 0 = 2;  G02 = (1·2) + 0 + (4·1) = 6;  G12 = 0
        "gram": [[30, 2, 6], [2, 3, 0], [6, 0, 5]],
        "routed_norm_sums": [1 + 5, 1 + r2, 0 + 1],
        "routed_weighted_norm_sums": [0.6 * 1 + 0.2 * 5, 0.4 * 1 + 0.7 * r2, 0.3 * 0 + 0.8 * 1],
        # P_ij = Σ_t p_i p_j
        "router_prob_gram": [
            [0.25 + 0.01 + 0.04, 0.15 + 0.06 + 0.04, 0.10 + 0.03 + 0.12],
            [0.15 + 0.06 + 0.04, 0.09 + 0.36 + 0.04, 0.06 + 0.18 + 0.12],
            [0.10 + 0.03 + 0.12, 0.06 + 0.18 + 0.12, 0.04 + 0.09 + 0.36],
        ],
        "shared_gate_sum": 0.5 + 0.25 + 1.0,
    }
    assert set(expected) == set(SUM_FIELDS)
    for name, value in expected.items():
        got = getattr(s, name)
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(got, torch.tensor(value, dtype=torch.float64), rtol=0, atol=1e-7, msg=name)


def test_gram_diagonal_equals_squared_norm_sums() -> None:
    s = hand_example()
    torch.testing.assert_close(s.gram.diagonal(), s.output_sq_norm_sums)


def random_tokens(seed: int, t: int, e: int = 5, k: int = 2, h: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(t, e, generator=g, dtype=torch.float64), dim=-1)
    weights, indices = probs.topk(k, dim=-1)
    outputs = torch.randn(e, t, h, generator=g, dtype=torch.float64)
    gate = torch.rand(t, generator=g, dtype=torch.float64)
    return probs, weights, indices, outputs, gate


def test_merge_of_two_halves_equals_one_pass() -> None:
    probs, weights, indices, outputs, gate = random_tokens(seed=1, t=11)
    whole = LayerStats(0, 5, 2)
    whole.update(probs, weights, indices, outputs, gate)
    first, second = LayerStats(0, 5, 2), LayerStats(0, 5, 2)
    first.update(probs[:4], weights[:4], indices[:4], outputs[:, :4], gate[:4])
    second.update(probs[4:], weights[4:], indices[4:], outputs[:, 4:], gate[4:])
    merged = first.merge(second)
    for name in SUM_FIELDS:
        torch.testing.assert_close(
            getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-12, msg=name
        )
    assert float(first.num_tokens) == 4.0  # inputs untouched


def test_merge_refuses_other_layer_or_sizes() -> None:
    with pytest.raises(StatsError, match="layer, num_experts, top_k"):
        LayerStats(0, 5, 2).merge(LayerStats(1, 5, 2))
    with pytest.raises(StatsError, match="layer, num_experts, top_k"):
        LayerStats(0, 5, 2).merge(LayerStats(0, 5, 3))


def test_state_dict_round_trip() -> None:
    s = hand_example()
    state = s.state_dict()
    assert int(state["layer"]) == 4 and int(state["num_experts"]) == 3 and int(state["top_k"]) == 2
    back = LayerStats.from_state_dict(state)
    assert (back.layer, back.num_experts, back.top_k) == (4, 3, 2)
    for name in SUM_FIELDS:
        assert torch.equal(getattr(back, name), getattr(s, name)), name


def test_from_state_dict_names_missing_and_misshapen_entries() -> None:
    state = hand_example().state_dict()
    del state["gram"]
    with pytest.raises(StatsError, match=r"missing \['gram'\]"):
        LayerStats.from_state_dict(state)
    state = hand_example().state_dict()
    state["counts"] = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(StatsError, match="counts"):
        LayerStats.from_state_dict(state)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probs": PROBS[:, :2]}, "probs has shape"),
        ({"topk_indices": TOPK_INDICES[:, :1]}, "topk_indices has shape"),
        ({"topk_indices": torch.tensor([[0, 1], [1, 3], [2, 0]])}, r"outside \[0, 2\]"),
        ({"topk_indices": torch.tensor([[0, 0], [1, 2], [2, 0]])}, "repeat an expert"),
        ({"expert_outputs": OUTPUTS[:2]}, "expert_outputs has shape"),
        ({"shared_gate": SHARED_GATE[:2]}, "shared_gate has shape"),
    ],
)
def test_update_rejects_inconsistent_inputs(change: dict, message: str) -> None:
    args = {
        "probs": PROBS,
        "topk_weights": TOPK_WEIGHTS,
        "topk_indices": TOPK_INDICES,
        "expert_outputs": OUTPUTS,
        "shared_gate": SHARED_GATE,
    }
    args.update(change)
    stats = LayerStats(0, 3, 2)
    with pytest.raises(StatsError, match=message):
        stats.update(**args)
    assert float(stats.num_tokens) == 0.0
