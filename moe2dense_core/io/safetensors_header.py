"""Parse and check a safetensors file's header without reading its tensor data.

File layout (safetensors spec): 8 bytes little-endian u64 N, then N bytes of JSON mapping each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to byte 8 + N), an optional
"__metadata__" entry, then the data. A file is complete iff its length is 8 + N + max(end) and every
tensor's byte span equals numel × itemsize of its dtype.
"""

from __future__ import annotations

import json
import math
import struct
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

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


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
