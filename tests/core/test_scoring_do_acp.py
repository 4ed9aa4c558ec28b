"""do_acp and its D-optimal search: brute force, local optimality, and the top-K-by-acp guarantee."""

from __future__ import annotations

import itertools

import pytest
import torch

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring import SCORERS, get_scorer, select_top_k
from moe2dense_core.scoring.d_optimal import fedorov_exchange, greedy_d_optimal, log_det
from moe2dense_core.scoring.do_acp import default_ridge, quality_gram
from moe2dense_core.stats.layer_stats import LayerStats
from tests.fixtures.synthetic_stats import simulate_layer_stats

do_acp = get_scorer("do_acp")


def heuristic(exhaustive_limit: int) -> MethodOptions:
    """do_acp's options with exact search up to C(E, K) ≤ exhaustive_limit (0: always the heuristic)."""
    return SCORERS.choose({"name": "do_acp", "exhaustive_limit": exhaustive_limit})


def regularised(stats: LayerStats, top_k: int | None = None) -> torch.Tensor:
    """M + λI with the default λ = mean(diag M)/k, written out independently of the scorer."""
    m = quality_gram(stats)
    lam = float(torch.diagonal(m).mean()) / (top_k or stats.top_k)
    return m + lam * torch.eye(stats.num_experts, dtype=torch.float64)


def set_log_det(matrix: torch.Tensor, subset: list[int]) -> float:
    return float(torch.logdet(matrix[subset][:, subset]))


def brute_force_best(matrix: torch.Tensor, k: int) -> tuple[float, list[int]]:
    return max(
        (set_log_det(matrix, list(s)), list(s)) for s in itertools.combinations(range(matrix.shape[0]), k)
    )


def random_spd(size: int, gen: torch.Generator) -> torch.Tensor:
    rank = int(torch.randint(1, size + 2, (1,), generator=gen))
    x = (
        torch.randn(size, rank, generator=gen, dtype=torch.float64)
        * 3
        * torch.rand(size, 1, generator=gen, dtype=torch.float64)
    )
    m = x @ x.T
    return m + float(torch.diagonal(m).mean()) * 0.1 * torch.eye(size, dtype=torch.float64)


def test_quality_gram_matches_its_definition() -> None:
    stats = simulate_layer_stats(0, 5, 2, seed=1)
    acp = get_scorer("acp")(stats, 2).scores
    expected = torch.tensor(
        [
            [(acp[i] * acp[j]).sqrt() * stats.gram[i, j] / stats.num_tokens for j in range(5)]
            for i in range(5)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(quality_gram(stats), expected, rtol=1e-13, atol=0)


def test_default_ridge_is_mean_diagonal_over_k_and_one_for_a_zero_matrix() -> None:
    assert default_ridge(torch.diag(torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)), 3) == pytest.approx(
        3.0 / 3
    )
    assert default_ridge(torch.zeros(3, 3, dtype=torch.float64), 2) == 1.0


@pytest.mark.parametrize("num_experts", [3, 5, 8])
def test_do_acp_equals_brute_force_for_small_e(num_experts: int) -> None:
    for seed in range(4):
        stats = simulate_layer_stats(0, num_experts, 2, seed=seed)
        matrix = regularised(stats)
        for k in range(1, num_experts + 1):
            best_value, _ = brute_force_best(matrix, k)
            chosen = do_acp(stats, k).selected
            assert set_log_det(matrix, chosen) == pytest.approx(best_value, rel=1e-12, abs=1e-12)


def test_do_acp_heuristic_beats_top_k_by_acp_on_random_statistics() -> None:
    for seed in range(12):
        num_experts = 12 + 4 * (seed % 4)
        stats = simulate_layer_stats(0, num_experts, 4, seed=seed, num_tokens=32)
        matrix = regularised(stats)
        acp = get_scorer("acp")(stats, 4).scores
        for k in (4, 6, 9):
            chosen = do_acp(stats, k, heuristic(0)).selected
            assert len(chosen) == k == len(set(chosen))
            assert set_log_det(matrix, chosen) >= set_log_det(matrix, select_top_k(acp, k)) - 1e-12


def test_greedy_follows_the_naive_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        matrix = random_spd(9, gen)
        chosen: list[int] = []
        for _step in range(5):
            gains = {j: set_log_det(matrix, sorted(chosen + [j])) for j in range(9) if j not in chosen}
            chosen.append(max(gains, key=lambda j: (gains[j], -j)))
        assert greedy_d_optimal(matrix, 5) == sorted(chosen)


def test_exchange_reaches_a_swap_local_optimum_no_worse_than_its_start() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        matrix = random_spd(11, gen)
        start = greedy_d_optimal(matrix, 4)
        final = fedorov_exchange(matrix, start)
        value = set_log_det(matrix, final)
        assert value >= set_log_det(matrix, start) - 1e-12
        for out_expert in final:
            for in_expert in set(range(11)) - set(final):
                swapped = sorted(set(final) - {out_expert} | {in_expert})
                assert set_log_det(matrix, swapped) <= value + 1e-9


def test_exchange_improves_a_bad_start() -> None:
    """Two identical experts (0, 1) and two distinct ones: starting from {0, 1} must swap to a diverse set."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], dtype=torch.float64)
    matrix = features @ features.T + 0.01 * torch.eye(4, dtype=torch.float64)
    final = fedorov_exchange(matrix, [0, 1])
    assert 2 in final and len({0, 1} & set(final)) == 1
    assert log_det(matrix[final][:, final]) > log_det(matrix[[0, 1]][:, [0, 1]])


def duplicate_expert_stats() -> LayerStats:
    """E = 4, N = 10, equal cp: experts 0 and 1 have identical, largest outputs; 2 and 3 are orthogonal, smaller."""
    features = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    gram = features @ features.T
    return LayerStats(
        layer=0,
        num_experts=4,
        top_k=2,
        num_tokens=torch.tensor(10.0, dtype=torch.float64),
        counts=torch.full((4,), 5.0, dtype=torch.float64),
        prob_sums_selected=torch.full((4,), 2.5, dtype=torch.float64),
        output_sq_norm_sums=torch.diagonal(gram).clone(),
        gram=gram,
    )


def test_do_acp_prefers_diverse_experts_over_duplicates() -> None:
    stats = duplicate_expert_stats()
    assert select_top_k(get_scorer("acp")(stats, 2).scores, 2) == [0, 1]
    for exhaustive_limit in (20_000, 0):
        assert do_acp(stats, 2, heuristic(exhaustive_limit)).selected == [0, 2]


def test_do_acp_with_all_zero_outputs_keeps_the_lowest_indices() -> None:
    stats = simulate_layer_stats(0, 6, 2, seed=3)
    stats.gram.zero_()
    stats.output_sq_norm_sums.zero_()
    for exhaustive_limit in (20_000, 0):
        assert do_acp(stats, 3, heuristic(exhaustive_limit)).selected == [0, 1, 2]


def test_do_acp_returns_acp_as_its_scores() -> None:
    stats = simulate_layer_stats(0, 6, 2, seed=4)
    assert torch.equal(do_acp(stats, 2).scores, get_scorer("acp")(stats, 2).scores)
