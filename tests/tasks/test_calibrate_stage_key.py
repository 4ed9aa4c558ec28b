"""The calibrate stage's cache key holds a memory bound of `statistics` exactly when it can change a bit of
the statistics (tasks/calibrate.py, `bounds_that_round`): max_chunk_bytes and, layer by layer,
max_block_bytes when expert outputs are collected; never max_hidden_bytes (a spill is exact:
tests/core/test_stats_spill.py). A bound that is left out is checked here to leave the statistics
bit-identical on a real teacher."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.layer_stats import SUM_FIELDS
from moe2dense_core.stats.request import EVERYTHING, EXPERT_OUTPUTS, ROUTER_ONLY, StatsRequest
from moe2dense_platform.corpus import CorpusSpec
from moe2dense_platform.recipe import CalibrationConfig, StatisticsConfig
from tasks.calibrate import calibrate_task  # noqa: F401 (declares the stage)
from tasks.stage import STAGES
from tests.fixtures.tiny_moe import build_tiny_moe, calibration_batches
from tests.flows.tiny_teacher import animal_paragraphs


@pytest.fixture
def key_of(tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(20)))
    calibration = CalibrationConfig(data=CorpusSpec(source="files", paths=(text,)))
    source = SimpleNamespace(snapshot_digest="a" * 64)

    def key(mode: str, request: StatsRequest = EVERYTHING, **bounds: int) -> str:
        statistics = StatisticsConfig(mode=mode, **bounds)
        return STAGES["calibrate"].key(
            None, {"source": source, "calibration": calibration, "statistics": statistics, "request": request}
        )

    return key


@pytest.mark.parametrize("mode", ["in_memory", "layer_by_layer"])
def test_a_changed_hidden_bound_reuses_the_stage(key_of, mode: str) -> None:
    for request in (EVERYTHING, ROUTER_ONLY):
        assert key_of(mode, request, max_hidden_bytes=1) == key_of(mode, request)


@pytest.mark.parametrize("request_", [EVERYTHING, EXPERT_OUTPUTS])
def test_bounds_that_change_the_summation_order_of_expert_outputs_recalibrate(key_of, request_) -> None:
    for mode in ("in_memory", "layer_by_layer"):
        assert key_of(mode, request_, max_chunk_bytes=1) != key_of(mode, request_)
    assert key_of("layer_by_layer", request_, max_block_bytes=1) != key_of("layer_by_layer", request_)
    assert key_of("in_memory", request_, max_block_bytes=1) == key_of("in_memory", request_)  # never read


def test_router_only_statistics_reuse_the_stage_for_any_bound(key_of) -> None:
    for mode in ("in_memory", "layer_by_layer"):
        for bound in ("max_chunk_bytes", "max_block_bytes"):
            assert key_of(mode, ROUTER_ONLY, **{bound: 1}) == key_of(mode, ROUTER_ONLY)


def test_what_the_key_leaves_out_leaves_router_only_statistics_bit_identical(tmp_path: Path) -> None:
    teacher = build_tiny_moe("qwen3_moe", tmp_path / "qwen3_moe")
    collect = {"mode": "layer_by_layer", "request": ROUTER_ONLY}
    default = collect_stats(teacher, calibration_batches(), **collect)
    # one token per chunk, one expert per block
    for bounds in ({"max_chunk_bytes": 1}, {"max_block_bytes": 1}):
        bounded = collect_stats(teacher, calibration_batches(), **collect, **bounds)
        assert bounded.digest() == default.digest(), bounds
        for index, layer in default.layers.items():
            for name in SUM_FIELDS:
                reference = getattr(layer, name)
                if reference is not None:
                    assert torch.equal(getattr(bounded.layers[index], name), reference), (bounds, index, name)
