"""ShardedCheckpointWriter: shards by size, standard index, digests, and nothing visible after a failure."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from moe2dense_core.io import CheckpointReader, ShardedCheckpointWriter, TensorEntry, file_sha256


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


@contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Real fault injection: the OS refuses any write past `max_bytes` of a file (RLIMIT_FSIZE → EFBIG,
    "File too large"), as a full disk refuses one; SIGXFSZ is ignored so the write fails instead."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, previous_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.mark.parametrize("streaming", [False, True])
def test_disk_error_while_writing_a_shard_leaves_nothing_visible(tmp_path: Path, streaming: bool) -> None:
    """Shards of ~4 KB are written; the last tensor (16 KB, a shard of its own) dies half-way."""
    tensors = _tensors() | {"zz.big": torch.randn(64, 64)}
    layout = [TensorEntry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()] if streaming else None
    with (
        pytest.raises(OSError, match="File too large"),
        file_size_limit(10_000),
        ShardedCheckpointWriter(tmp_path, max_shard_bytes=5000, layout=layout) as writer,
    ):
        for name in writer.order or list(tensors):
            writer.add(name, tensors[name])
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    writer = ShardedCheckpointWriter(tmp_path)
    writer.add("x", torch.zeros(2))
    with pytest.raises(ValueError, match="'x' added twice"):
        writer.add("x", torch.zeros(2))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def _every_dtype() -> dict[str, torch.Tensor]:
    """One tensor of every storable dtype, odd shapes, a scalar, an empty tensor and a non-ASCII name."""
    generator = torch.Generator().manual_seed(1)
    floats = torch.randn(3, 5, generator=generator)
    return {
        "b.f32": floats,
        "a.f32": torch.randn(7, generator=generator),
        "f64": floats.double(),
        "bf16": floats.bfloat16(),
        "f16": floats.half(),
        "fp8_e4m3": floats.to(torch.float8_e4m3fn),
        "fp8_e5m2": floats.to(torch.float8_e5m2),
        "i64": torch.arange(6).reshape(2, 3),
        "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16),
        "i8": torch.arange(-2, 3, dtype=torch.int8),
        "u8": torch.arange(9, dtype=torch.uint8).reshape(3, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "gewicht.größe": torch.ones(2),
    }


@pytest.mark.parametrize("streaming", [False, True])
def test_a_shard_is_byte_identical_to_safetensors_save(tmp_path: Path, streaming: bool) -> None:
    tensors = _every_dtype()
    layout = [TensorEntry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()] if streaming else None
    with ShardedCheckpointWriter(tmp_path, layout=layout) as writer:
        for name in writer.order or list(tensors):
            writer.add(name, tensors[name])
    written = (tmp_path / "model-00001-of-00001.safetensors").read_bytes()
    assert written == save(tensors, metadata={"format": "pt"})


def test_streaming_shards_are_byte_identical_to_save_file_of_their_tensors(tmp_path: Path) -> None:
    """Streaming: the layout is laid out in the serializer's order (dtype, then name) and cut into shards;
    each shard equals safetensors' own file of its tensors, and digests are of the files as written."""
    tensors = _tensors()
    layout = [TensorEntry(n, t.dtype, tuple(t.shape)) for n, t in reversed(tensors.items())]
    writer = ShardedCheckpointWriter(tmp_path / "out", max_shard_bytes=5000, layout=layout)
    assert writer.order == sorted(
        tensors, key=lambda n: ({torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[tensors[n].dtype], n)
    )
    with writer:
        for name in writer.order:
            writer.add(name, tensors[name])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert len(writer.shard_digests) == 5  # 4 × two float32 matrices (4 KB), then the 9th + norm + head
    for shard, digest in writer.shard_digests.items():
        names = [n for n, s in index["weight_map"].items() if s == shard]
        save_file({n: tensors[n] for n in names}, str(tmp_path / "reference"), metadata={"format": "pt"})
        assert (tmp_path / "out" / shard).read_bytes() == (tmp_path / "reference").read_bytes()
        assert digest == file_sha256(tmp_path / "out" / shard)


def test_streaming_refuses_a_tensor_out_of_order_or_unlike_its_declaration(tmp_path: Path) -> None:
    layout = [TensorEntry("a", torch.float32, (2, 3)), TensorEntry("b", torch.float32, (4,))]
    for name, tensor, message in [
        ("b", torch.zeros(4), r"expected 'a' next \(writer.order\), got 'b'"),
        ("c", torch.zeros(4), "'c': it is not in the declared layout"),
        ("a", torch.zeros(3, 2), r"'a' is torch.float32 \[3, 2\], declared as torch.float32 \[2, 3\]"),
        ("a", torch.zeros(2, 3).half(), "declared as torch.float32"),
    ]:
        writer = ShardedCheckpointWriter(tmp_path, layout=layout)
        with pytest.raises(ValueError, match=message):
            writer.add(name, tensor)
        assert list(tmp_path.iterdir()) == []


def test_streaming_refuses_to_close_with_declared_tensors_missing(tmp_path: Path) -> None:
    layout = [TensorEntry("a", torch.float32, (2,)), TensorEntry("b", torch.float32, (2,))]
    with (
        pytest.raises(ValueError, match="1 declared tensors never added, e.g. 'b'"),
        ShardedCheckpointWriter(tmp_path, layout=layout) as writer,
    ):
        writer.add("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_a_layout_naming_a_tensor_twice_or_an_unstorable_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"declares \['a'\] more than once"):
        ShardedCheckpointWriter(tmp_path, layout=[TensorEntry("a", torch.float32, (1,))] * 2)
    with pytest.raises(ValueError, match="'z': dtype torch.complex64 cannot be stored in safetensors"):
        TensorEntry("z", torch.complex64, (1,))
