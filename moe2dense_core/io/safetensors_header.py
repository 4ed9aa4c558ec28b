"""Parse and check a safetensors file's header without reading its tensor data; encode one the way
the safetensors library does, so a file can be streamed tensor by tensor.

File layout (safetensors spec): 8 bytes little-endian u64 N, then N bytes of JSON mapping each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to byte 8 + N), an optional
"__metadata__" entry, then the data. A file is complete iff its length is 8 + N + max(end) and every
tensor's byte span equals numel × itemsize of its dtype.

What `safetensors.torch.save_file` writes (safetensors 0.8, `tensor.rs::prepare`), reproduced by
`serialization_order` + `encode_header` byte for byte (tests/core/test_io_writer.py compares them):
  data order   tensors sorted by dtype, widest first in SERIALIZATION_DTYPE_RANK, then by name;
               their bytes back to back in that order, offsets contiguous from 0;
  header JSON  compact, "__metadata__" first, then the tensors in data order, each
               {"dtype","shape","data_offsets"}; padded with spaces to a multiple of 8 bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from moe2dense_core.errors import CheckpointError

# safetensors dtype string → (torch dtype, bytes per element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}

DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, (dtype, _) in SAFETENSORS_DTYPES.items()}
"""torch dtype → safetensors dtype string (the inverse of SAFETENSORS_DTYPES)."""

SERIALIZATION_DTYPE_RANK: dict[str, int] = {
    name: rank
    for rank, name in enumerate(
        ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32", "F32", "F64", "I64")
    )
}
"""Declaration order of the safetensors library's `Dtype` enum (restricted to SAFETENSORS_DTYPES): its
serializer puts higher ranks first."""

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_HEADER_ALIGNMENT = 8


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to be written: its name, dtype and shape (what its header entry is made of)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(
                f"tensor {self.name!r}: dtype {self.dtype} cannot be stored in safetensors "
                f"(supported: {', '.join(str(d) for d in DTYPE_NAMES)})"
            )

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[DTYPE_NAMES[self.dtype]][1]


def serialization_order(entries: Iterable[TensorEntry]) -> list[TensorEntry]:
    """`entries` in the order the safetensors serializer lays their data out (see module docstring)."""
    return sorted(entries, key=lambda e: (-SERIALIZATION_DTYPE_RANK[DTYPE_NAMES[e.dtype]], e.name))


def encode_header(entries: Sequence[TensorEntry], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length prefix + JSON header of a file holding `entries`' data back to back in this order.

    Byte-identical to safetensors' own when `entries` is in `serialization_order` (module docstring).
    """
    header: dict[str, object] = {} if metadata is None else {"__metadata__": dict(metadata)}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": DTYPE_NAMES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % _HEADER_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name → TensorInfo for one shard, after checking the file is complete and consistent.

    Raises CheckpointError naming the file (and tensor) when the header does not parse, a dtype is
    unknown, a tensor's byte span disagrees with its shape, or the file is truncated / has trailing bytes.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{path}: corrupt or truncated safetensors header (declares {header_len} header bytes, "
                f"file has {size} bytes)"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (expected a JSON object)")

    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_str, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
        if dtype_str not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_str!r}")
        dtype, itemsize = SAFETENSORS_DTYPES[dtype_str]
        expected = math.prod(shape) * itemsize
        if end - begin != expected or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r} spans bytes [{begin}, {end}) but {dtype_str}{list(shape)} needs {expected}"
            )
        infos[name] = TensorInfo(dtype=dtype, shape=shape, nbytes=expected)
        data_end = max(data_end, end)
    expected_size = 8 + header_len + data_end
    if size != expected_size:
        kind = "truncated" if size < expected_size else "has trailing bytes"
        raise CheckpointError(f"{path}: {kind}: {size} bytes on disk, header says {expected_size}")
    return infos
