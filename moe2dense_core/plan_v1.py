"""Plans and plan configs written before methods owned their options (ConversionPlan schema_version 1).

Version 1 kept every method option as a flat PlanConfig field; version 2 nests each option in the
choice of its method. A version-1 plan is upgraded on load: each flat option moves into its method
when that method is the one chosen, and is dropped otherwise (it had no effect):

    do_acp_exchange, do_acp_ridge, do_acp_exhaustive_limit
                  →  scoring: {name: do_acp, exchange, ridge, exhaustive_limit}
    seed          →  scoring: {name: random, seed}
    router_mass   →  scaling: {name: uniform, router_mass}

A recipe (or any new PlanConfig) that still writes a flat option is refused, naming its new place.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails

FLAT_OPTIONS = {
    "do_acp_exchange": ("scoring", "do_acp", "exchange"),
    "do_acp_ridge": ("scoring", "do_acp", "ridge"),
    "do_acp_exhaustive_limit": ("scoring", "do_acp", "exhaustive_limit"),
    "seed": ("scoring", "random", "seed"),
    "router_mass": ("scaling", "uniform", "router_mass"),
}
"""Version-1 PlanConfig field → (kind, method, option)."""

METHOD_KINDS = ("scoring", "grouping", "scaling")


def upgrade_v1_plan(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 plan mapping as version 2 (a new mapping; `data` is not changed)."""
    config = data.get("config")
    if not isinstance(config, dict):
        return {**data, "schema_version": 2}  # nothing to move: validation reports the missing config
    rest = {
        key: value for key, value in config.items() if key not in FLAT_OPTIONS and key not in METHOD_KINDS
    }
    choices = {kind: {"name": config[kind]} for kind in METHOD_KINDS if kind in config}
    for flat, (kind, method, option) in FLAT_OPTIONS.items():
        if flat in config and kind in choices and choices[kind]["name"] == method:
            choices[kind][option] = config[flat]
    return {**data, "schema_version": 2, "config": {**rest, **choices}}


def refuse_flat_options(config: object) -> None:
    """A pydantic ValidationError at each version-1 flat option of a PlanConfig mapping, naming its new place."""
    moved = []
    for flat, (kind, method, option) in FLAT_OPTIONS.items():
        if isinstance(config, dict) and flat in config:
            new_place = f"is now an option of its method, written {kind}: {{name: {method}, {option}: …}}"
            moved.append(
                InitErrorDetails(
                    type="value_error", loc=(flat,), input=config[flat], ctx={"error": new_place}
                )
            )
    if moved:
        raise ValidationError.from_exception_data("PlanConfig", moved)
