"""Scoring methods (METHOD.md "Scoring"): each registered under its METHOD.md name on import.

from moe2dense_core.scoring import get_scorer
result = get_scorer("do_acp")(layer_stats, num_selected=8)   # ScoreResult(scores [E], selected)
"""

from moe2dense_core.scoring import acp, cp, do_acp, ean, pp, random, reap, sf  # noqa: F401  (registration)
from moe2dense_core.scoring.registry import Scorer, get_scorer, register_scorer, scorer_names
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.scoring.selection import rank_experts, select_top_k

__all__ = [
    "ScoreResult",
    "Scorer",
    "get_scorer",
    "rank_experts",
    "register_scorer",
    "scorer_names",
    "select_top_k",
]
