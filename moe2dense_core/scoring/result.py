"""ScoreResult: what every scorer returns (METHOD.md "Scoring"; higher = keep)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoreResult:
    """A scorer's decision for one MoE layer with E experts.

    scores: [E] float64, one value per expert (higher = keep); also the per-expert weights that
        score-weighted merging uses.
    selected: the K kept expert indices (ascending), chosen by a set scorer such as `do_acp`; a ranking
        scorer leaves it None and the registry fills in the top-K by `scores` (registry.py).
    """

    scores: torch.Tensor
    selected: list[int] | None = None

    def __post_init__(self) -> None:
        if self.scores.dim() != 1 or self.scores.dtype != torch.float64:
            raise ValueError(
                f"ScoreResult.scores: expected a 1-D float64 tensor, got {self.scores.dtype} {tuple(self.scores.shape)}"
            )
