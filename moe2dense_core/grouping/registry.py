"""Grouper registry: every grouping method under its METHOD.md name.

A grouper is `fn(request: GroupingRequest) -> list[list[int]]`: exactly k = request.num_groups
non-empty, disjoint groups covering the K kept experts, deterministic. Calling a registered
grouper checks that contract, so a broken method fails loudly instead of producing a wrong model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping.request import GroupingRequest


@dataclass(frozen=True)
class Grouper:
    """A registered grouping method; calling it returns validated groups."""

    name: str
    fn: Callable[[GroupingRequest], list[list[int]]]

    def __call__(self, request: GroupingRequest) -> list[list[int]]:
        groups = self.fn(request)
        members = [e for group in groups for e in group]
        if (
            len(groups) != request.num_groups
            or any(not group for group in groups)
            or sorted(members) != sorted(request.ranked)
        ):
            raise PlanError(
                f"grouping {self.name!r} on layer {request.stats.layer}: {groups} is not {request.num_groups} "
                f"non-empty groups partitioning the kept experts {sorted(request.ranked)}"
            )
        return groups


_GROUPERS: dict[str, Grouper] = {}


def register_grouper(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(request) -> groups` under `name`."""

    def register(fn: Callable) -> Callable:
        if name in _GROUPERS:
            raise ValueError(f"grouper {name!r} is registered twice")
        _GROUPERS[name] = Grouper(name=name, fn=fn)
        return fn

    return register


def grouper_names() -> list[str]:
    """Every registered grouper name, sorted."""
    return sorted(_GROUPERS)


def get_grouper(name: str) -> Grouper:
    """The grouper registered under `name`; PlanError listing the known ones otherwise."""
    try:
        return _GROUPERS[name]
    except KeyError:
        raise PlanError(f"grouping: unknown grouper {name!r}; known: {', '.join(grouper_names())}") from None
