"""ShardFile: one safetensors file streamed tensor by tensor — header first, sha256 computed as it is written.

    shard = ShardFile(path, entries, metadata={"format": "pt"})   # entries: the file's tensors, in data order
    for entry in entries:
        shard.write(entry.name, tensor)                             # must come in that order
    digest = shard.finish()                                         # sha256 of the whole file

The header is known before any data because every tensor's byte size follows from its dtype and shape
(safetensors_header.encode_header). Each tensor's bytes go from its CPU memory to an io.direct_write.DirectFile,
which writes them past the page cache where the filesystem allows and hashes them as they are written (never
re-read from disk), overlapping the disk with the making of the next tensor: memory beyond the caller's tensor
is that file's two 8 MiB staging buffers (plus a contiguous CPU copy when the tensor is not one already).
With `entries` in `serialization_order` the file is byte-identical to `safetensors.torch.save_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from moe2dense_core.io.direct_write import DirectFile
from moe2dense_core.io.safetensors_header import TensorEntry, encode_header


class ShardFile:
    """See module docstring. Not thread-safe; `abort()` closes and deletes the partial file."""

    def __init__(self, path: Path, entries: Sequence[TensorEntry], metadata: dict[str, str] | None) -> None:
        self.path = Path(path)
        self._pending = list(entries)
        self._next = 0
        self._file = DirectFile(self.path)
        try:
            self._file.write(encode_header(self._pending, metadata))
        except BaseException:
            self.abort()
            raise

    @property
    def complete(self) -> bool:
        """Every declared tensor has been written."""
        return self._next == len(self._pending)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next declared tensor; ValueError when it is not the next one or its dtype / shape differ."""
        if self.complete:
            raise ValueError(f"{self.path.name}: tensor {name!r} written after the last declared tensor")
        entry = self._pending[self._next]
        if name != entry.name:
            raise ValueError(f"{self.path.name}: expected tensor {entry.name!r} next, got {name!r}")
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise ValueError(
                f"{self.path.name}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, declared as "
                f"{entry.dtype} {list(entry.shape)}"
            )
        self._file.write(tensor_bytes(tensor))
        self._next += 1

    def finish(self) -> str:
        """Close the complete file; returns its sha256 (hex)."""
        if not self.complete:
            missing = [e.name for e in self._pending[self._next :]]
            raise ValueError(f"{self.path.name}: closed before its tensors {missing} were written")
        return self._file.close()

    def abort(self) -> None:
        self._file.abort()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of `tensor` in row-major order, as safetensors stores them (native little-endian);
    no copy when it already is a contiguous CPU tensor."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())
