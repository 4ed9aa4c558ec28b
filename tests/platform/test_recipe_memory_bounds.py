"""The recipe's calibration memory bounds (`statistics.max_chunk_bytes / max_hidden_bytes / max_block_bytes`):
the library's defaults, and a bound that is not a positive number of bytes refused at its field path."""

from __future__ import annotations

import inspect

import pytest

from moe2dense_core.stats.collect import collect_stats
from moe2dense_platform.recipe import RecipeError, parse_recipe

BOUNDS = ("max_chunk_bytes", "max_hidden_bytes", "max_block_bytes")


def recipe_with(**statistics: object):
    return parse_recipe({"name": "t", "source": {"model": "./teacher"}, "statistics": statistics})


def test_defaults_are_the_library_defaults() -> None:
    """The defaults collect_stats itself runs with (stats/memory_bounds.py)."""
    statistics = recipe_with().statistics
    library = inspect.signature(collect_stats).parameters
    for field in BOUNDS:
        assert getattr(statistics, field) == library[field].default, field


@pytest.mark.parametrize("field", BOUNDS)
def test_a_bound_is_set_in_bytes(field: str) -> None:
    assert getattr(recipe_with(**{field: 1}).statistics, field) == 1


@pytest.mark.parametrize(
    "value, problem",
    [
        (0, r"greater than 0 \(got 0\)"),
        (-1, r"greater than 0 \(got -1\)"),
        (True, r"a number, not a boolean \(got True\)"),
        ("256MiB", "a valid integer"),
    ],
)
@pytest.mark.parametrize("field", BOUNDS)
def test_a_bound_that_is_not_a_positive_byte_count_is_refused_naming_the_field(
    field: str, value: object, problem: str
) -> None:
    with pytest.raises(RecipeError, match=rf"statistics\.{field}: Input should be {problem}"):
        recipe_with(**{field: value})
