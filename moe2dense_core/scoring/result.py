"""ScoreResult: what every scorer returns (METHOD.md "Scoring"; higher = keep)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoreResult:
    """A scorer's decision for one MoE layer with E experts.

    scores: [E] float64, one value per expert (higher = keep); also the per-expert weights that
        score-weighted merging uses.
    selected: the chosen set of K expert indices (ascending) for set scorers such as `do_acp`;
        None for ranking scorers, whose set is the top-K by `scores` (see selection.py).
    """

    scores: torch.Tensor
    selected: list[int] | None = None

    def __post_init__(self) -> None:
        if self.scores.dim() != 1 or self.scores.dtype != torch.float64:
            raise ValueError(
                f"ScoreResult.scores: expected a 1-D float64 tensor, got {self.scores.dtype} {tuple(self.scores.shape)}"
            )
