"""ShardedCheckpointWriter: write a safetensors checkpoint tensor by tensor, one shard in memory at a time.

Usage:
    with ShardedCheckpointWriter(out_dir, max_shard_bytes=2 * 2**30) as writer:
        for name, tensor in ...:
            writer.add(name, tensor)
    writer.shard_digests  # {shard file name: sha256}

Tensors are buffered until adding the next would exceed `max_shard_bytes`; then the buffer is written as
one shard under a temporary name (`.tmp-…`). `close()` renames every shard to the standard
`model-0000i-of-0000n.safetensors` names and writes `model.safetensors.index.json` (HF format,
`metadata.total_size` = sum of tensor bytes) last, each through a temp file + os.replace. A failure
before that (an exception inside the `with` block or while writing) deletes the temporary files, so no
partial checkpoint is ever visible under the final names. A single shard is still indexed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.io.digests import file_sha256
from moe2dense_core.io.reader import SAFETENSORS_INDEX

_TMP_PREFIX = ".tmp-moe2dense-"


class ShardedCheckpointWriter:
    """See module docstring. out_dir is created if needed; existing final-named files are replaced."""

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._tmp_shards: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self._total_bytes = 0
        self.shard_digests: dict[str, str] = {}
        self.index_path: Path | None = None
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor (copied to contiguous CPU memory); flushes a shard when full."""
        if self._closed:
            raise RuntimeError("ShardedCheckpointWriter.add after close")
        if name in self._names:
            raise ValueError(f"ShardedCheckpointWriter: tensor {name!r} added twice")
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if (
            tensor.untyped_storage().nbytes() != nbytes
        ):  # a view into a larger tensor: safetensors needs its own
            tensor = tensor.clone()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor
        self._buffer_bytes += nbytes
        self._total_bytes += nbytes
        self._names.add(name)

    def close(self) -> dict[str, str]:
        """Flush, give shards their final names, write the index; returns {shard name: sha256}."""
        if self._closed:
            return self.shard_digests
        if self._buffer or not self._tmp_shards:
            self._flush()
        count = len(self._tmp_shards)
        weight_map: dict[str, str] = {}
        final_paths = []
        for i, (tmp, names) in enumerate(self._tmp_shards, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            final_paths.append((tmp, self.out_dir / final))
            weight_map.update(dict.fromkeys(names, final))
            self.shard_digests[final] = file_sha256(tmp)
        for tmp, final in final_paths:
            os.replace(tmp, final)
        index = {
            "metadata": {"total_size": self._total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        self.index_path = self.out_dir / SAFETENSORS_INDEX
        atomic_write_text(self.index_path, json.dumps(index, indent=2) + "\n")
        self._closed = True
        return dict(self.shard_digests)

    def abort(self) -> None:
        """Delete every temporary shard written so far; nothing becomes visible."""
        for tmp, _ in self._tmp_shards:
            tmp.unlink(missing_ok=True)
        self._tmp_shards.clear()
        self._buffer.clear()
        self._closed = True

    def __enter__(self) -> ShardedCheckpointWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise

    def _flush(self) -> None:
        tmp = self.out_dir / f"{_TMP_PREFIX}{len(self._tmp_shards):05d}.safetensors"
        try:
            save_file(self._buffer, str(tmp), metadata={"format": "pt"})
        except BaseException:
            tmp.unlink(missing_ok=True)
            self.abort()
            raise
        self._tmp_shards.append((tmp, list(self._buffer)))
        self._buffer = {}
        self._buffer_bytes = 0
