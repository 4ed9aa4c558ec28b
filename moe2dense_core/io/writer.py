"""ShardedCheckpointWriter: write a safetensors checkpoint tensor by tensor, shard by shard.

Usage, streaming (memory: one tensor — what assembly does):
    layout = [TensorEntry(name, dtype, shape), ...]          # every tensor of the checkpoint, any order
    with ShardedCheckpointWriter(out_dir, max_shard_bytes=2 * 2**30, layout=layout) as writer:
        for name in writer.order:                             # the order the tensors must be added in
            writer.add(name, make(name))
    writer.shard_digests  # {shard file name: sha256}

Usage, buffered (memory: one shard — for small checkpoints whose tensors are not known in advance):
    with ShardedCheckpointWriter(out_dir, max_shard_bytes=...) as writer:
        for name, tensor in ...:
            writer.add(name, tensor)

Shards: consecutive tensors (in `order` when streaming, in arrival order when buffered) are packed into one
shard until the next would take it over `max_shard_bytes` (a tensor larger than that gets a shard of its
own). Streaming lays the whole layout out in the safetensors serializer's order (dtype, then name:
safetensors_header.serialization_order), so every shard file is byte-identical to
`safetensors.torch.save_file(its tensors, metadata={"format": "pt"})`; buffered shards are written in that
order too. Each shard is written by io.shard_file.ShardFile under a temporary name (`.tmp-…`), header first,
its sha256 computed from the bytes as they are written (never re-read), past the page cache where the
filesystem allows and fsynced when complete (io/direct_write.py). `close()` renames every shard to the
standard `model-0000i-of-0000n.safetensors` names and writes `model.safetensors.index.json` (HF format,
`metadata.total_size` = sum of tensor bytes) last, through a temp file + os.replace. A failure before that
(an exception inside the `with` block or while writing) deletes the temporary files, so no partial
checkpoint is ever visible under the final names. A single shard is still indexed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.io.reader import SAFETENSORS_INDEX
from moe2dense_core.io.safetensors_header import TensorEntry, serialization_order
from moe2dense_core.io.shard_file import ShardFile

_TMP_PREFIX = ".tmp-moe2dense-"
_METADATA = {"format": "pt"}


@dataclass
class _Shard:
    """A shard written under its temporary name: its tensors and, once complete, its sha256."""

    tmp: Path
    names: list[str]
    digest: str = ""


class ShardedCheckpointWriter:
    """See module docstring. out_dir is created if needed; existing final-named files are replaced."""

    def __init__(
        self,
        out_dir: str | Path,
        max_shard_bytes: int = 5 * 2**30,
        *,
        layout: Iterable[TensorEntry] | None = None,
    ) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[_Shard] = []
        self._open: ShardFile | None = None
        self._names: set[str] = set()
        self._total_bytes = 0
        self.shard_digests: dict[str, str] = {}
        self.index_path: Path | None = None
        self._closed = False
        self._planned: list[list[TensorEntry]] | None = None
        self.order: list[str] | None = None
        """Streaming: every declared name, in the order `add` must be called in; None when buffered."""
        if layout is not None:
            entries = serialization_order(layout)
            repeated = sorted(name for name, n in Counter(e.name for e in entries).items() if n > 1)
            if repeated:
                raise ValueError(f"ShardedCheckpointWriter: layout declares {repeated} more than once")
            self._planned = _pack(entries, max_shard_bytes)
            self.order = [e.name for e in entries]

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write (streaming) or queue (buffered) one tensor; see module docstring."""
        if self._closed:
            raise RuntimeError("ShardedCheckpointWriter.add after close")
        if name in self._names:
            raise ValueError(f"ShardedCheckpointWriter: tensor {name!r} added twice")
        if self._planned is not None:
            self._write_next(name, tensor, self._planned, self.order or [])
            return
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.untyped_storage().nbytes() != nbytes:  # a view into a larger tensor: keep only its bytes
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
        missing = [name for name in self.order or [] if name not in self._names]
        if missing:
            raise ValueError(
                f"ShardedCheckpointWriter: {len(missing)} declared tensors never added, e.g. {missing[0]!r}"
            )
        if self._buffer or not self._shards:
            self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        renames = []
        for i, shard in enumerate(self._shards, start=1):
            final = f"model-{i:05d}-of-{count:05d}.safetensors"
            renames.append((shard.tmp, self.out_dir / final))
            weight_map.update(dict.fromkeys(shard.names, final))
            self.shard_digests[final] = shard.digest
        for tmp, final in renames:
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
        if self._open is not None:
            self._open.abort()
            self._open = None
        for shard in self._shards:
            shard.tmp.unlink(missing_ok=True)
        self._shards.clear()
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

    # ---- internals -------------------------------------------------------------------------------
    def _write_next(
        self, name: str, tensor: torch.Tensor, planned: list[list[TensorEntry]], order: list[str]
    ) -> None:
        """Streaming: write `name` into the shard it was planned in (opening that shard when it is next)."""
        expected = order[len(self._names)] if len(self._names) < len(order) else None
        if name != expected:
            where = "" if name in order else ": it is not in the declared layout"
            raise ValueError(
                f"ShardedCheckpointWriter: expected {expected!r} next (writer.order), got {name!r}{where}"
            )
        try:
            shard = self._open or self._start_shard(planned[len(self._shards)])
            shard.write(name, tensor)
            self._names.add(name)
            self._total_bytes += tensor.numel() * tensor.element_size()
            if shard.complete:
                self._finish_shard(shard)
        except BaseException:
            self.abort()
            raise

    def _flush(self) -> None:
        """Buffered: write the queued tensors as one shard."""
        entries = serialization_order(
            TensorEntry(n, t.dtype, tuple(t.shape)) for n, t in self._buffer.items()
        )
        try:
            shard = self._start_shard(entries)
            for entry in entries:
                shard.write(entry.name, self._buffer[entry.name])
            self._finish_shard(shard)
        except BaseException:
            self.abort()
            raise
        self._buffer = {}
        self._buffer_bytes = 0

    def _start_shard(self, entries: list[TensorEntry]) -> ShardFile:
        tmp = self.out_dir / f"{_TMP_PREFIX}{len(self._shards):05d}.safetensors"
        self._open = ShardFile(tmp, entries, _METADATA)
        self._shards.append(_Shard(tmp, [e.name for e in entries]))
        return self._open

    def _finish_shard(self, shard: ShardFile) -> None:
        self._shards[-1].digest = shard.finish()
        self._open = None


def _pack(entries: list[TensorEntry], max_shard_bytes: int) -> list[list[TensorEntry]]:
    """Consecutive entries packed into shards of at most max_shard_bytes (a larger tensor alone in one)."""
    shards: list[list[TensorEntry]] = []
    size = 0
    for entry in entries:
        if not shards or size + entry.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards
