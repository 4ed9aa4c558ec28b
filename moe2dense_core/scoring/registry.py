"""Scorer registry: every scoring method under its METHOD.md name.

Two kinds of scorer:
- ranking scorers `fn(stats: LayerStats, **options) -> Tensor [E] float64`: one value per expert;
  the kept set is the top-K (selection.py);
- set scorers (`chooses_set=True`) `fn(stats, num_selected, **options) -> ScoreResult` that choose
  the K experts themselves (`do_acp`) and return per-expert scores for merging.
`options` maps each keyword option of the function to the PlanConfig field that feeds it, so the
function signature is the method's config schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from moe2dense_core.errors import PlanError
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats


@dataclass(frozen=True)
class Scorer:
    """A registered scoring method; calling it always gives a ScoreResult."""

    name: str
    fn: Callable
    chooses_set: bool = False
    options: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, stats: LayerStats, num_selected: int, **options: object) -> ScoreResult:
        if self.chooses_set:
            return self.fn(stats, num_selected, **options)
        return ScoreResult(scores=self.fn(stats, **options))


_SCORERS: dict[str, Scorer] = {}


def register_scorer(
    name: str, *, chooses_set: bool = False, options: Mapping[str, str] | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` under `name` (see module docstring for the two signatures)."""

    def register(fn: Callable) -> Callable:
        if name in _SCORERS:
            raise ValueError(f"scorer {name!r} is registered twice")
        _SCORERS[name] = Scorer(name=name, fn=fn, chooses_set=chooses_set, options=dict(options or {}))
        return fn

    return register


def scorer_names() -> list[str]:
    """Every registered scorer name, sorted."""
    return sorted(_SCORERS)


def get_scorer(name: str) -> Scorer:
    """The scorer registered under `name`; PlanError listing the known ones otherwise."""
    try:
        return _SCORERS[name]
    except KeyError:
        raise PlanError(f"scoring: unknown scorer {name!r}; known: {', '.join(scorer_names())}") from None
