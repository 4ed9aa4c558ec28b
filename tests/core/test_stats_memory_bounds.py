"""The one rule for calibration's memory bounds (moe2dense_core/stats/memory_bounds.py: chunk and block ≥ 1
byte, hidden states ≥ 0 where 0 always spills), and collect_stats applying it at entry: a bad bound is
refused before the first batch is read — before the embedding pass and any forward — in either mode and
whether or not the mode uses that bound. Evidence without timing: a batch generator that records what is
read, and the on_progress callback, which a normal run calls after every batch or layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from moe2dense_core.errors import StatsError
from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.memory_bounds import MINIMUM_BYTES, check_memory_bounds
from tests.fixtures.tiny_moe import build_tiny_moe, calibration_batches

MODES = ("in_memory", "layer_by_layer")
BAD_BOUNDS = [
    ("max_chunk_bytes", 0),
    ("max_hidden_bytes", -1),
    ("max_block_bytes", 0),
    ("max_block_bytes", 1.5),
]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen3_moe", tmp_path_factory.mktemp("tiny") / "qwen3_moe")


class RecordedRun:
    """Batches handed out lazily (each recorded when read) and the on_progress calls of one run."""

    def __init__(self) -> None:
        self.read: list[tuple[int, ...]] = []
        self.progress: list[tuple[int, int]] = []

    def batches(self) -> Iterator[torch.Tensor]:
        for batch in calibration_batches():
            self.read.append(tuple(batch.shape))
            yield batch

    def on_progress(self, done: int, total: int) -> None:
        self.progress.append((done, total))


def test_the_least_bounds_pass_and_one_below_is_refused_naming_it() -> None:
    check_memory_bounds(**MINIMUM_BYTES)
    for name, least in MINIMUM_BYTES.items():
        for bad in (least - 1, True, float(least), str(least)):
            with pytest.raises(StatsError, match=rf"^calibration_{name} must be .+, got {bad!r}$"):
                check_memory_bounds("calibration_", **{**MINIMUM_BYTES, name: bad})


@pytest.mark.parametrize("mode", MODES)
def test_a_run_reads_every_batch_and_reports_progress(teacher_dir: Path, mode: str) -> None:
    """The evidence the refusal test relies on, under the least bounds (0: the hidden states spill)."""
    run = RecordedRun()
    collect_stats(teacher_dir, run.batches(), mode=mode, on_progress=run.on_progress, **MINIMUM_BYTES)
    assert run.read == [(2, 12), (1, 7)] and run.progress


@pytest.mark.parametrize("name, value", BAD_BOUNDS)
@pytest.mark.parametrize("mode", MODES)
def test_a_bad_bound_is_refused_before_the_first_batch_is_read(
    teacher_dir: Path, mode: str, name: str, value: object
) -> None:
    run = RecordedRun()
    with pytest.raises(StatsError, match=rf"^{name} must be .+, got {value!r}$"):
        collect_stats(teacher_dir, run.batches(), mode=mode, on_progress=run.on_progress, **{name: value})
    assert run.read == [] and run.progress == []
