"""open_teacher, the one entry that opens a teacher: resolved, read and validated once; its snapshot digest;
recorded digests that refuse a changed byte; a re-open that skips validation only when the digests prove
the snapshot is the validated one; the tokenizer against the vocabulary; and convert() opening and
validating its teacher exactly once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import moe2dense_core.checkpoint.teacher as teacher_module
from moe2dense_core import PlanConfig, collect_stats, convert
from moe2dense_core.arch import get_spec
from moe2dense_core.checkpoint import open_teacher
from moe2dense_core.errors import CheckpointError, Moe2DenseError
from moe2dense_core.io import CheckpointReader, file_sha256
from tests.fixtures.counting import Counted
from tests.fixtures.tiny_moe import INDEX_FILE, build_tiny_moe


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen3_moe", tmp_path_factory.mktemp("teacher"))


@pytest.fixture
def copy_dir(teacher_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(teacher_dir, tmp_path / "teacher"))


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> Counted:
    counted = Counted(teacher_module.validate_checkpoint)
    monkeypatch.setattr(teacher_module, "validate_checkpoint", counted)
    return counted


def batches() -> list[torch.Tensor]:
    return [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]


def flip_last_data_byte(model_dir: Path) -> str:
    """Flip one bit of the last tensor byte of the first shard: same size, headers intact."""
    shard = sorted(set(json.loads((model_dir / INDEX_FILE).read_text())["weight_map"].values()))[0]
    data = bytearray((model_dir / shard).read_bytes())
    data[-1] ^= 0x01
    (model_dir / shard).write_bytes(bytes(data))
    return shard


def test_open_teacher_reads_the_spec_dims_and_source(teacher_dir: Path) -> None:
    with open_teacher(teacher_dir) as teacher:
        assert (teacher.path, teacher.source, teacher.revision) == (
            teacher_dir,
            str(teacher_dir.absolute()),
            None,
        )
        assert teacher.spec is get_spec("qwen3_moe")
        assert teacher.dims == get_spec("qwen3_moe").dims(teacher.config)
        assert teacher.expert_weights(1).gate.shape == (8, 32, 64)  # all E experts, [E, I, H]


def test_the_snapshot_digest_covers_config_index_shards_and_tokenizer(
    teacher_dir: Path, copy_dir: Path
) -> None:
    teacher = open_teacher(teacher_dir)
    digests = teacher.file_digests()
    shards = CheckpointReader(teacher_dir).shard_files()
    assert set(digests) >= {"config.json", INDEX_FILE, "tokenizer.json", "tokenizer_config.json", *shards}
    assert all(digests[name] == file_sha256(teacher_dir / name) for name in digests)
    assert open_teacher(copy_dir).snapshot_digest() == teacher.snapshot_digest()
    (copy_dir / "tokenizer_config.json").write_text((copy_dir / "tokenizer_config.json").read_text() + " ")
    assert open_teacher(copy_dir).snapshot_digest() != teacher.snapshot_digest()


def test_a_flipped_byte_passes_the_headers_but_not_the_recorded_digests(
    teacher_dir: Path, copy_dir: Path
) -> None:
    recorded = open_teacher(teacher_dir).file_digests()
    shard = flip_last_data_byte(copy_dir)
    open_teacher(copy_dir).close()  # headers cannot see a changed tensor byte: only a digest can
    with pytest.raises(CheckpointError, match=rf"{shard}: sha256 [0-9a-f]{{64}} does not match the recorded"):
        open_teacher(copy_dir, expected_digests=recorded)


def test_re_opening_the_validated_snapshot_skips_validation(copy_dir: Path, validations: Counted) -> None:
    with open_teacher(copy_dir) as first:
        recorded = first.file_digests()
    assert validations.calls == 1
    with open_teacher(copy_dir, expected_digests=recorded) as again:
        assert again.dims == first.dims and again.snapshot_digest() == first.snapshot_digest()
    assert validations.calls == 1


def test_a_touched_snapshot_is_validated_and_hashed_again(copy_dir: Path, validations: Counted) -> None:
    recorded = open_teacher(copy_dir).file_digests()
    config = copy_dir / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1_000_000))
    open_teacher(copy_dir, expected_digests=recorded).close()  # same bytes: validated again, digests agree
    assert validations.calls == 2
    shard = flip_last_data_byte(copy_dir)
    with pytest.raises(CheckpointError, match=rf"{shard}: sha256 .* does not match the recorded"):
        open_teacher(copy_dir, expected_digests=recorded)


def test_digests_recorded_for_another_snapshot_are_no_proof(copy_dir: Path, validations: Counted) -> None:
    recorded = open_teacher(copy_dir).file_digests()
    with pytest.raises(
        CheckpointError, match=r"config\.json: sha256 [0-9a-f]+ does not match the recorded 0{64}"
    ):
        open_teacher(copy_dir, expected_digests=recorded | {"config.json": "0" * 64})
    with pytest.raises(CheckpointError, match=r"extra\.json: recorded in the snapshot digests but no longer"):
        open_teacher(copy_dir, expected_digests=recorded | {"extra.json": "0" * 64})
    assert validations.calls == 3


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(copy_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(copy_dir)
    tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    tokenizer.save_pretrained(copy_dir)
    with pytest.raises(
        CheckpointError,
        match=r"tokenizer\.json: the tokenizer has 260 tokens but config\.json vocab_size is 258: ids 258…259",
    ):
        open_teacher(copy_dir)


def test_missing_tokenizer_files_are_refused_where_a_tokenizer_is_needed(copy_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy_dir / name).unlink()
    open_teacher(copy_dir).close()  # converting token batches needs no tokenizer
    with pytest.raises(CheckpointError, match=r"no tokenizer files \(looked for tokenizer\.json"):
        open_teacher(copy_dir, require_tokenizer=True)


def test_an_opened_teacher_takes_no_revision(teacher_dir: Path) -> None:
    with open_teacher(teacher_dir) as teacher, pytest.raises(Moe2DenseError, match="already open"):
        collect_stats(teacher, batches(), revision="main")


def test_convert_opens_and_validates_its_teacher_once(
    teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validations: Counted
) -> None:
    """resolve → read → spec → validate happen once for the whole conversion: calibration, the expert
    weights weight_cluster reads, and assembly all use the one opened Teacher."""
    opens = Counted(teacher_module.open_teacher)
    monkeypatch.setattr(teacher_module, "open_teacher", opens)
    opened_folders: list[Path] = []

    class RecordingReader(CheckpointReader):
        def __init__(self, model_dir, **kwargs) -> None:
            opened_folders.append(Path(model_dir))
            super().__init__(model_dir, **kwargs)

    monkeypatch.setattr(teacher_module, "CheckpointReader", RecordingReader)
    config = PlanConfig(scoring="acp", num_selected=4, num_groups=2, grouping="weight_cluster")
    result = convert(teacher_dir, batches(), tmp_path / "dense", config)
    assert (opens.calls, validations.calls, opened_folders) == (1, 1, [teacher_dir])
    assert result.provenance.source_snapshot_digest == open_teacher(teacher_dir).snapshot_digest()
