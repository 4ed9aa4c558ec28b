"""The recipe's calibration memory bounds (`statistics.max_chunk_bytes / max_hidden_bytes / max_block_bytes`):
the library's defaults and the library's one rule (moe2dense_core/stats/memory_bounds.py): chunk and block
a positive number of bytes, hidden states ≥ 0 (0: always spill), anything else refused at its field path."""

from __future__ import annotations

import inspect

import pytest

from moe2dense_core.stats.collect import collect_stats
from moe2dense_platform.recipe import Recipe, RecipeError, parse_recipe

BOUNDS = ("max_chunk_bytes", "max_hidden_bytes", "max_block_bytes")
POSITIVE = r"a positive number of bytes"
NOT_NEGATIVE = r"a number of bytes ≥ 0 \(0: always spill to disk\)"
REQUIREMENT = {"max_chunk_bytes": POSITIVE, "max_hidden_bytes": NOT_NEGATIVE, "max_block_bytes": POSITIVE}


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


def test_a_hidden_bound_of_zero_always_spills_and_is_accepted() -> None:
    assert recipe_with(max_hidden_bytes=0).statistics.max_hidden_bytes == 0


@pytest.mark.parametrize("field", BOUNDS)
def test_the_json_schema_states_the_least_bound(field: str) -> None:
    statistics = Recipe.model_json_schema()["$defs"]["StatisticsConfig"]["properties"]
    assert statistics[field]["minimum"] == (0 if field == "max_hidden_bytes" else 1)


@pytest.mark.parametrize(
    "field, value", [(field, -1) for field in BOUNDS] + [("max_chunk_bytes", 0), ("max_block_bytes", 0)]
)
def test_a_bound_below_its_least_value_is_refused_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(
        RecipeError, match=rf"statistics\.{field}: Input should be {REQUIREMENT[field]} \(got {value}\)"
    ):
        recipe_with(**{field: value})


@pytest.mark.parametrize(
    "value, problem", [(True, r"a number, not a boolean \(got True\)"), ("256MiB", "a valid integer")]
)
@pytest.mark.parametrize("field", BOUNDS)
def test_a_bound_that_is_not_a_number_of_bytes_is_refused_naming_the_field(
    field: str, value: object, problem: str
) -> None:
    with pytest.raises(RecipeError, match=rf"statistics\.{field}: Input should be {problem}"):
        recipe_with(**{field: value})
