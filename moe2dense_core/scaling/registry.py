"""Scaling registry: every down-projection scaling under its METHOD.md name.

A scaling is `fn(stats: LayerStats, groups: list[list[int]], **options) -> list[float]`, one constant
c_g per group; `options` maps each keyword option to the PlanConfig field that feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from moe2dense_core.errors import PlanError
from moe2dense_core.stats.layer_stats import LayerStats


@dataclass(frozen=True)
class Scaling:
    """A registered scaling method."""

    name: str
    fn: Callable[..., list[float]]
    options: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, stats: LayerStats, groups: list[list[int]], **options: object) -> list[float]:
        return self.fn(stats, groups, **options)


_SCALINGS: dict[str, Scaling] = {}


def register_scaling(
    name: str, *, options: Mapping[str, str] | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(stats, groups, **options) -> scales` under `name`."""

    def register(fn: Callable) -> Callable:
        if name in _SCALINGS:
            raise ValueError(f"scaling {name!r} is registered twice")
        _SCALINGS[name] = Scaling(name=name, fn=fn, options=dict(options or {}))
        return fn

    return register


def scaling_names() -> list[str]:
    """Every registered scaling name, sorted."""
    return sorted(_SCALINGS)


def get_scaling(name: str) -> Scaling:
    """The scaling registered under `name`; PlanError listing the known ones otherwise."""
    try:
        return _SCALINGS[name]
    except KeyError:
        raise PlanError(f"scaling: unknown scaling {name!r}; known: {', '.join(scaling_names())}") from None
