"""Stage `calibrate` runs collect_stats under the recipe's memory bounds (`statistics.max_*_bytes`): its
statistics are those of collect_stats under the same bounds, and a hidden-state bound below the
calibration's size spills (0, which the recipe accepts: always). Through `.fn` on a tiny trained teacher,
in the embedded default."""

from __future__ import annotations

import tempfile

import pytest
import torch

from moe2dense_core.distill.precision import compute_dtype
from moe2dense_core.stats.collect import collect_stats
from moe2dense_platform.recipe import StatisticsConfig
from tasks.calibrate import calibrate_task, calibration_rows
from tasks.source import source_task
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)

TINY_BOUNDS = {"max_chunk_bytes": 1, "max_block_bytes": 1}  # one token per chunk, one expert per block


@pytest.fixture(scope="module")
def recipe_and_source(teacher):  # noqa: F811
    torch.set_num_threads(1)
    recipe = teacher.recipe()
    return recipe, source_task.fn(recipe.source)


def test_the_stage_calibrates_under_the_recipe_bounds(recipe_and_source, parent_run_id):  # noqa: F811
    recipe, source = recipe_and_source
    statistics = recipe.statistics.model_copy(
        update={"mode": "layer_by_layer", "device": "cpu", **TINY_BOUNDS}
    )
    result = calibrate_task.fn(source, recipe.calibration, statistics, parent_run_id)
    rows = calibration_rows(source, recipe.calibration)
    expected = collect_stats(
        source.local_path,
        list(rows.split(recipe.calibration.batch_size)),
        mode="layer_by_layer",
        dtype=compute_dtype(statistics.dtype, torch.device("cpu")),
        **TINY_BOUNDS,
    )
    assert result.stats_digest == expected.digest()


@pytest.mark.parametrize("max_hidden_bytes", [0, 1])
def test_a_hidden_bound_below_the_calibration_spills(
    recipe_and_source,
    parent_run_id,  # noqa: F811
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    max_hidden_bytes: int,
):
    """The spill file goes under the temp folder: one that does not exist makes that spill fail. The
    section is validated as a recipe's is (0 is accepted: always spill)."""
    recipe, source = recipe_and_source
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    statistics = StatisticsConfig(
        **{**recipe.statistics.model_dump(), "mode": "layer_by_layer", "max_hidden_bytes": max_hidden_bytes}
    )
    with pytest.raises(FileNotFoundError, match="missing/moe2dense-hidden-"):
        calibrate_task.fn(source, recipe.calibration, statistics, parent_run_id)
