"""Streaming assembly: shards exactly as safetensors writes them, teacher digests reused (no second hash),
output digests taken while writing, and memory maps dropped as it goes."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save

import moe2dense_core.io.digests as digests_module
from moe2dense_core.assembly import assemble
from moe2dense_core.checkpoint import open_teacher
from moe2dense_core.io import CheckpointReader, file_sha256
from tests.core.test_assembly_families import pruning_plan
from tests.fixtures.counting import Counted
from tests.fixtures.tiny_moe import build_tiny_moe


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("gpt_oss", tmp_path_factory.mktemp("gpt_oss"), seed=4)


def test_every_shard_is_what_safetensors_save_writes_for_its_tensors(
    teacher_dir: Path, tmp_path: Path
) -> None:
    result = assemble(
        teacher_dir, pruning_plan("gpt_oss", teacher_dir, [6, 1]), tmp_path / "dense", max_shard_bytes=30_000
    )
    assert len(result.shard_digests) > 2
    for shard, digest in result.shard_digests.items():
        written = (result.out_dir / shard).read_bytes()
        assert written == save(load_file(result.out_dir / shard), metadata={"format": "pt"}), shard
        assert digest == file_sha256(result.out_dir / shard)


def test_a_teacher_opened_with_known_digests_is_not_hashed_again(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline opens its teacher with the digests its source stage recorded: assembly takes the
    teacher's shard digests from there and the output digests from the writer — no file is hashed."""
    recorded = open_teacher(teacher_dir).file_digests()
    hashes = Counted(file_sha256)
    monkeypatch.setattr(digests_module, "file_sha256", hashes)  # what files_sha256 calls per file
    with open_teacher(teacher_dir, expected_digests=recorded) as teacher:
        result = assemble(teacher, pruning_plan("gpt_oss", teacher_dir, [0, 5]), tmp_path / "dense")
    assert hashes.calls == 0
    shards = CheckpointReader(teacher_dir).shard_files()
    assert result.provenance.source_shard_digests == {shard: recorded[shard] for shard in shards}
    assert result.provenance.source_snapshot_digest == open_teacher(teacher_dir).snapshot_digest()


def test_no_teacher_shard_stays_mapped_after_assembly(teacher_dir: Path, tmp_path: Path) -> None:
    with open_teacher(teacher_dir) as teacher:
        assemble(teacher, pruning_plan("gpt_oss", teacher_dir, [2, 3]), tmp_path / "dense")
        maps = Path("/proc/self/maps").read_text()
        assert not [line for line in maps.splitlines() if str(teacher_dir) in line]
