"""Scaling registry: every down-projection scaling under its METHOD.md name (moe2dense_core/registry.py).

A scaling is `fn(stats: LayerStats, groups: list[list[int]], options) -> list[float]`, one constant c_g
per group; `options` is its MethodOptions model.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe2dense_core.errors import PlanError
from moe2dense_core.registry import Method, MethodOptions, MethodRegistry
from moe2dense_core.stats.layer_stats import LayerStats


@dataclass(frozen=True)
class Scaling(Method):
    """A registered scaling method."""

    def __call__(
        self, stats: LayerStats, groups: list[list[int]], options: MethodOptions | None = None
    ) -> list[float]:
        """c_g per group; options default to the method's defaults."""
        return self.fn(stats, groups, options or self.defaults())


SCALINGS: MethodRegistry[Scaling] = MethodRegistry("scaling", "scaling", PlanError, Scaling)
register_scaling = SCALINGS.register
get_scaling = SCALINGS.get
scaling_names = SCALINGS.names
