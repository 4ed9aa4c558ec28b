"""convert() passes calibration's memory bounds to collect_stats: a conversion under tiny bounds (one token
per chunk, one expert per block, hidden states spilled to disk) calibrates with them and writes the same
dense model as one under the defaults; a bound that breaks the library's rule (stats/memory_bounds.py:
chunk and block ≥ 1 byte, hidden states ≥ 0, 0 = always spill) is refused first."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from moe2dense_core.conversion import convert
from moe2dense_core.errors import StatsError
from moe2dense_core.plan import PlanConfig, stats_request_for
from moe2dense_core.stats.collect import collect_stats
from tests.fixtures.tiny_moe import build_tiny_moe, calibration_batches

TINY_BOUNDS = {"max_chunk_bytes": 1, "max_hidden_bytes": 1, "max_block_bytes": 1}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen3_moe", tmp_path_factory.mktemp("tiny") / "qwen3_moe")


def as_convert_arguments(bounds: dict[str, int]) -> dict[str, int]:
    return {f"calibration_{name}": value for name, value in bounds.items()}


def test_tiny_bounds_calibrate_with_them_and_give_the_same_dense_model(
    teacher_dir: Path, tmp_path: Path
) -> None:
    config = PlanConfig(scoring="do_acp")  # reads the all-expert outputs: chunks and blocks are used
    mode = {"calibration_mode": "layer_by_layer"}
    default = convert(teacher_dir, calibration_batches(), tmp_path / "default", config, **mode)
    bounded = convert(
        teacher_dir,
        calibration_batches(),
        tmp_path / "bounded",
        config,
        **mode,
        **as_convert_arguments(TINY_BOUNDS),
    )
    expected = collect_stats(
        teacher_dir,
        calibration_batches(),
        mode="layer_by_layer",
        request=stats_request_for(config),
        **TINY_BOUNDS,
    )
    assert bounded.provenance.plan.stats_digest == expected.digest()
    plans = [result.provenance.plan.layers for result in (default, bounded)]
    assert [(p.kept, p.groups) for p in plans[0]] == [(p.kept, p.groups) for p in plans[1]]
    for reference, value in zip(*plans, strict=True):
        assert value.scores == pytest.approx(reference.scores, rel=1e-6)
    assert bounded.shard_digests == default.shard_digests


@pytest.mark.parametrize("max_hidden_bytes", [0, 1])  # 0: always spill
def test_the_hidden_bound_reaches_the_hidden_state_store(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_hidden_bytes: int
) -> None:
    """Beyond max_hidden_bytes the hidden states spill to a file under the temp folder: one that does not
    exist makes that spill, and only it, fail."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    batches, mode = calibration_batches(), {"calibration_mode": "layer_by_layer"}
    convert(teacher_dir, batches, tmp_path / "in_ram", **mode)
    with pytest.raises(FileNotFoundError, match="missing/moe2dense-hidden-"):
        convert(
            teacher_dir, batches, tmp_path / "spilled", **mode, calibration_max_hidden_bytes=max_hidden_bytes
        )


POSITIVE = "a positive number of bytes"
NOT_NEGATIVE = r"a number of bytes ≥ 0 \(0: always spill to disk\)"
BAD_BOUNDS = [
    *[
        (name, value, POSITIVE)
        for name in ("max_chunk_bytes", "max_block_bytes")
        for value in (0, -1, True, 1.5)
    ],
    *[("max_hidden_bytes", value, NOT_NEGATIVE) for value in (-1, True, 1.5)],
]


@pytest.mark.parametrize("name, value, requirement", BAD_BOUNDS)
def test_a_bound_that_breaks_the_rule_is_refused_before_calibration(
    teacher_dir: Path, tmp_path: Path, name: str, value: object, requirement: str
) -> None:
    with pytest.raises(StatsError, match=rf"calibration_{name} must be {requirement}, got {value!r}"):
        convert(teacher_dir, calibration_batches(), tmp_path / "dense", **{f"calibration_{name}": value})
    assert not (tmp_path / "dense").exists()
