"""D-optimal subset selection on a positive-definite matrix (the search behind `do_acp`).

Problem: given A [E, E] symmetric positive definite and K, find S ⊂ {0..E-1}, |S| = K, maximising
log det(A_S) (A_S the principal submatrix on S). NP-hard in general; `do_acp` [paper] uses

1. greedy forward selection [defined here]: start from S = ∅ and add the expert with the largest
   Schur complement d_j = A_jj − A_{j,S} A_S⁻¹ A_{S,j}, since log det(A_{S∪j}) = log det(A_S) + log d_j.
   This is pivoted Cholesky: one row of the factor per step, O(E·K) per step, float64 throughout.
2. Fedorov exchange [defined here]: repeatedly make the single swap (i ∈ S out, j ∉ S in) with the
   largest determinant ratio, while it increases log det. With B = A_S⁻¹, q_j = B A_{S,j} and
   d_j as above, the ratio of one swap is

       det(A_{S−i+j}) / det(A_S) = B_ii · d_j + (q_j)_i²

   (rank-one update of the inverse), evaluated for all K·(E−K) swaps at once. Each accepted swap is
   re-checked on a fresh Cholesky factor and kept only if log det strictly increases, so the search
   can never cycle and always terminates at a swap-local optimum.

3. exact search [defined here]: when C(E, K) is at most a limit, every K-subset is evaluated (batched
   Cholesky) and the maximum taken, so small problems get the true optimum.

Ties are broken deterministically towards the lower expert index (greedy) or the lower (i, j)
pair in ascending index order (exchange) or the lexicographically first subset (exact search).
"""

from __future__ import annotations

import itertools
import math

import torch

from moe2dense_core.errors import PlanError


def log_det(matrix: torch.Tensor) -> float:
    """log det of a symmetric positive-definite matrix [n, n] via Cholesky (0.0 for n = 0)."""
    if matrix.numel() == 0:
        return 0.0
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise PlanError(
            "do_acp: the regularised matrix M_S + λI is not positive definite (raise the option scoring.ridge)"
        )
    return float(2.0 * torch.log(torch.diagonal(factor)).sum())


def greedy_d_optimal(matrix: torch.Tensor, num_selected: int) -> list[int]:
    """Greedy forward selection (pivoted Cholesky) of K indices; returned ascending.

    matrix: A [E, E] float64 symmetric positive definite; num_selected: K in [0, E].
    """
    size = matrix.shape[0]
    residual = torch.diagonal(matrix).clone()  # d_j = A_jj − Σ_s L_js², the Schur complement of j given S
    factor_rows = matrix.new_zeros(num_selected, size)  # factor_rows[s, j] = L_{j, s}
    available = torch.ones(size, dtype=torch.bool)
    chosen: list[int] = []
    for step in range(num_selected):
        candidates = torch.where(available, residual, torch.full_like(residual, -torch.inf))
        pivot = int(torch.argmax(candidates))  # first maximum: the lower index wins ties
        if not float(residual[pivot]) > 0:
            raise PlanError(
                "do_acp: the regularised matrix M + λI is not positive definite (raise the option scoring.ridge)"
            )
        previous = factor_rows[:step]
        row = (matrix[pivot] - previous.T @ previous[:, pivot]) / torch.sqrt(residual[pivot])
        factor_rows[step] = row
        residual = residual - row**2
        available[pivot] = False
        chosen.append(pivot)
    return sorted(chosen)


def fedorov_exchange(matrix: torch.Tensor, selected: list[int]) -> list[int]:
    """Best-improvement single swaps from `selected` while log det(A_S) strictly increases; ascending."""
    size = matrix.shape[0]
    current = sorted(selected)
    current_log_det = log_det(matrix[current][:, current])
    while 0 < len(current) < size:
        outside = [j for j in range(size) if j not in set(current)]
        inside_idx = torch.as_tensor(current, dtype=torch.long)
        outside_idx = torch.as_tensor(outside, dtype=torch.long)
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(matrix[inside_idx][:, inside_idx]))  # B [K, K]
        cross = matrix[inside_idx][:, outside_idx]  # A_{S, j} [K, E−K]
        q = inverse @ cross  # [K, E−K]
        schur = torch.diagonal(matrix)[outside_idx] - (cross * q).sum(dim=0)  # d_j [E−K]
        ratio = torch.diagonal(inverse)[:, None] * schur[None, :] + q**2  # det(A_{S−i+j}) / det(A_S)
        best = int(torch.argmax(ratio))  # row-major first maximum: lower (i, j) wins ties
        if not float(ratio.flatten()[best]) > 1.0:
            break
        out_pos, in_pos = divmod(best, len(outside))
        candidate = sorted([e for e in current if e != current[out_pos]] + [outside[in_pos]])
        candidate_log_det = log_det(matrix[candidate][:, candidate])
        if not candidate_log_det > current_log_det:
            break
        current, current_log_det = candidate, candidate_log_det
    return current


def exhaustive_d_optimal(matrix: torch.Tensor, num_selected: int) -> list[int]:
    """The exact maximiser of log det(A_S) over all K-subsets (lexicographically first on ties); ascending.

    Cost: C(E, K) Cholesky factorisations of K×K, batched; callers bound C(E, K) (see subset_count).
    """
    size = matrix.shape[0]
    if num_selected == 0:
        return []
    subsets = torch.tensor(list(itertools.combinations(range(size), num_selected)))  # [C, K], lexicographic
    blocks = matrix[subsets[:, :, None], subsets[:, None, :]]  # [C, K, K]
    factors, info = torch.linalg.cholesky_ex(blocks)
    if bool((info != 0).any()):
        raise PlanError(
            "do_acp: the regularised matrix M + λI is not positive definite (raise the option scoring.ridge)"
        )
    log_dets = 2.0 * torch.log(torch.diagonal(factors, dim1=-2, dim2=-1)).sum(dim=-1)  # [C]
    return subsets[int(torch.argmax(log_dets))].tolist()


def subset_count(size: int, num_selected: int) -> int:
    """C(E, K), the number of candidate sets."""
    return math.comb(size, num_selected)
