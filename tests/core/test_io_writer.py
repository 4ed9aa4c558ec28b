"""ShardedCheckpointWriter: shards by size, standard index, digests, and nothing visible after a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.io import CheckpointReader, ShardedCheckpointWriter, file_sha256


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        f"model.layers.{i}.mlp.{p}.weight": torch.randn(16, 32, generator=generator)  # 2048 bytes each
        for i in range(3)
        for p in ("gate_proj", "up_proj", "down_proj")
    } | {
        "model.norm.weight": torch.ones(32, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(8, 32).half(),
    }


def test_round_trip_shards_by_size_with_standard_index(tmp_path: Path) -> None:
    tensors = _tensors()
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    with ShardedCheckpointWriter(tmp_path, max_shard_bytes=5000) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [
        f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)
    ]  # 2 matrices (4 KB) per shard
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert writer.shard_digests == {s: file_sha256(tmp_path / s) for s in shards}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    reader = CheckpointReader(tmp_path)
    assert reader.names() == sorted(tensors)
    for name, tensor in tensors.items():
        assert reader.dtype(name) == tensor.dtype
        assert torch.equal(reader.get(name), tensor)
    for shard in shards:  # no shard over the limit unless it holds a single tensor
        names = [n for n, s in index["weight_map"].items() if s == shard]
        assert len(names) == 1 or sum(tensors[n].numel() * tensors[n].element_size() for n in names) <= 5000


def test_views_into_larger_tensors_are_stored_on_their_own(tmp_path: Path) -> None:
    fused = torch.arange(24.0).reshape(2, 3, 4)
    with ShardedCheckpointWriter(tmp_path) as writer:
        writer.add("a", fused[0])
        writer.add("b", fused[1])
    files = list(tmp_path.glob("model-*.safetensors"))
    assert len(files) == 1 and files[0].stat().st_size < 24 * 4 + 400


def test_failure_inside_the_block_leaves_nothing_visible(tmp_path: Path) -> None:
    tensors = list(_tensors().items())
    with (
        pytest.raises(RuntimeError, match="boom"),
        ShardedCheckpointWriter(tmp_path, max_shard_bytes=3000) as writer,
    ):
        for i, (name, tensor) in enumerate(tensors):
            if i == 6:  # several shards already flushed to temporary files
                raise RuntimeError("boom")
            writer.add(name, tensor)
    assert list(tmp_path.iterdir()) == []


def test_disk_error_while_writing_a_shard_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the third shard write dies half-way, as on a full disk."""
    from moe2dense_core.io import writer as writer_module

    real_save_file = writer_module.save_file
    calls = []

    def failing_save_file(tensors: dict, path: str, metadata: dict) -> None:
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(writer_module, "save_file", failing_save_file)
    with (
        pytest.raises(OSError, match="No space left"),
        ShardedCheckpointWriter(tmp_path, max_shard_bytes=3000) as w,
    ):
        for name, tensor in _tensors().items():
            w.add(name, tensor)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    writer = ShardedCheckpointWriter(tmp_path)
    writer.add("x", torch.zeros(2))
    with pytest.raises(ValueError, match="'x' added twice"):
        writer.add("x", torch.zeros(2))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
