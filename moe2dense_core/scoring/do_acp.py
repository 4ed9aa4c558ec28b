"""`do_acp` — D-optimal, diversity-aware ACP [paper]; search and ridge [defined here].

Choose the kept set S, |S| = K, maximising

    log det(M_S + λI),   M_ij = sqrt(a_i a_j) · G_ij / N,

with a = acp (acp.py), G_ij = Σ_t ⟨f_i(x_t), f_j(x_t)⟩ the E×E Gram matrix of expert outputs over all
N calibration tokens (LayerStats.gram, symmetrised as (G + Gᵀ)/2), and λ = `ridge`, by default
mean(diag M) / k with k the teacher's top-k [defined here] (λ = 1 when diag M is all 0, where
every set ties and the lowest indices win). M is the Gram matrix of the quality-scaled outputs
sqrt(a_e)·f_e/sqrt(N), so log det rewards experts that are both good (large a) and different from
each other (volume spanned).

Search (d_optimal.py) [defined here]:
- exact over all K-subsets when C(E, K) ≤ `exhaustive_limit`;
- otherwise two starts, greedy forward selection and the top-K by acp, each improved by Fedorov
  exchange while log det increases (`exchange=True`); the start with the larger final log det wins
  (greedy on ties). Starting from the top-K by acp guarantees log det(do_acp) ≥ log det(top-K acp).

Returns ScoreResult(scores = acp [E], selected = S ascending): the merge weights use acp (METHOD.md).
"""

from __future__ import annotations

import torch
from pydantic import Field

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.acp import activation_weighted_cp
from moe2dense_core.scoring.d_optimal import (
    exhaustive_d_optimal,
    fedorov_exchange,
    greedy_d_optimal,
    log_det,
    subset_count,
)
from moe2dense_core.scoring.ratios import token_count
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.scoring.selection import select_top_k
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EVERYTHING


def quality_gram(stats: LayerStats) -> torch.Tensor:
    """M [E, E] float64: M_ij = sqrt(a_i a_j) · G_ij / N with a = acp (see module docstring)."""
    quality = torch.sqrt(activation_weighted_cp(stats).clamp(min=0))
    gram = (stats.gram + stats.gram.T) / 2
    return quality[:, None] * gram * quality[None, :] / token_count(stats)


def default_ridge(quality_matrix: torch.Tensor, top_k: int) -> float:
    """λ = mean(diag M) / k, or 1.0 when diag M is all zero [defined here]."""
    mean_diagonal = float(torch.diagonal(quality_matrix).mean())
    return mean_diagonal / top_k if mean_diagonal > 0 else 1.0


class DoAcpOptions(MethodOptions):
    exchange: bool = True
    """Improve the greedy and the top-K-by-acp starts by Fedorov exchange [defined here]."""
    ridge: float | None = Field(None, gt=0)
    """λ in log det(M_S + λI); None = mean(diag M)/k [defined here]."""
    exhaustive_limit: int = Field(20_000, ge=0)
    """Search every K-subset exactly when there are at most this many (C(E, K)) [defined here]."""


@register_scorer("do_acp", DoAcpOptions, needs=EVERYTHING)
def d_optimal_acp(stats: LayerStats, num_selected: int, options: DoAcpOptions) -> ScoreResult:
    """The D-optimal kept set of size K = num_selected and acp scores (see module docstring)."""
    quality_matrix = quality_gram(stats)
    lam = default_ridge(quality_matrix, stats.top_k) if options.ridge is None else options.ridge
    regularised = quality_matrix + lam * torch.eye(stats.num_experts, dtype=torch.float64)
    acp = activation_weighted_cp(stats)
    if subset_count(stats.num_experts, num_selected) <= options.exhaustive_limit:
        return ScoreResult(scores=acp, selected=exhaustive_d_optimal(regularised, num_selected))
    best: list[int] | None = None
    best_log_det = -float("inf")
    for start in (greedy_d_optimal(regularised, num_selected), select_top_k(acp, num_selected)):
        candidate = fedorov_exchange(regularised, start) if options.exchange else start
        candidate_log_det = log_det(regularised[candidate][:, candidate])
        if candidate_log_det > best_log_det:
            best, best_log_det = candidate, candidate_log_det
    return ScoreResult(scores=acp, selected=best)
