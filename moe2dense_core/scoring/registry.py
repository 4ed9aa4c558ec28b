"""Scorer registry: every scoring method under its METHOD.md name (moe2dense_core/registry.py).

A scorer is `fn(stats: LayerStats, num_selected: int, options) -> ScoreResult`, `options` its
MethodOptions model: scores [E] (higher = keep) and, for a scorer that chooses the K kept experts
itself (`do_acp`), that set. Calling a registered scorer completes and checks the result: without a
chosen set the kept set is the top-K by score (selection.py); the set must be K distinct experts in
[0, E). K itself is validated once, by plan.validate_plan_config.
A scorer declares the statistics it reads (`needs`, a StatsRequest; default everything), so a plan
collects only those; called on statistics that lack them it raises StatsError naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe2dense_core.errors import PlanError
from moe2dense_core.registry import Method, MethodOptions, MethodRegistry
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.scoring.selection import select_top_k
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EVERYTHING, StatsRequest


@dataclass(frozen=True)
class Scorer(Method):
    """A registered scoring method. control: a reference point (the `random` selection), not a method
    to compare, so a sweep's default grid leaves it out. needs: the statistics it reads."""

    control: bool = False
    needs: StatsRequest = EVERYTHING

    def __call__(
        self, stats: LayerStats, num_selected: int, options: MethodOptions | None = None
    ) -> ScoreResult:
        """ScoreResult with `selected` always set (ascending); options default to the method's defaults."""
        stats.collected.require(self.needs, f"scorer {self.name!r}")
        result = self.fn(stats, num_selected, options or self.defaults())
        kept = result.selected if result.selected is not None else select_top_k(result.scores, num_selected)
        if (
            result.scores.numel() != stats.num_experts
            or len(kept) != num_selected
            or len(set(kept)) != len(kept)
            or not all(0 <= e < stats.num_experts for e in kept)
        ):
            raise PlanError(
                f"scorer {self.name!r} on layer {stats.layer}: {result.scores.numel()} scores and kept set "
                f"{kept}, not {stats.num_experts} scores and {num_selected} distinct experts"
            )
        return ScoreResult(scores=result.scores, selected=sorted(kept))


SCORERS: MethodRegistry[Scorer] = MethodRegistry("scoring", "scorer", PlanError, Scorer)
register_scorer = SCORERS.register
get_scorer = SCORERS.get
scorer_names = SCORERS.names


def compared_scorers() -> list[str]:
    """Every registered scorer that is not a control: the default scorers of a sweep."""
    return [scorer.name for scorer in SCORERS.entries() if not scorer.control]
