"""Scoring methods (METHOD.md "Scoring"): each registered under its METHOD.md name on import.

from moe2dense_core.scoring import get_scorer
result = get_scorer("do_acp")(layer_stats, 8)   # ScoreResult(scores [E], selected: the K kept experts)
"""

from moe2dense_core.scoring import acp, cp, do_acp, ean, pp, random, reap, sf  # noqa: F401  (registration)
from moe2dense_core.scoring.registry import (
    SCORERS,
    Scorer,
    compared_scorers,
    get_scorer,
    register_scorer,
    scorer_names,
)
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.scoring.selection import rank_experts, select_top_k

__all__ = [
    "SCORERS",
    "ScoreResult",
    "Scorer",
    "compared_scorers",
    "get_scorer",
    "rank_experts",
    "register_scorer",
    "scorer_names",
    "select_top_k",
]
