"""Streaming checkpoint I/O: read one tensor at a time, write shard by shard, MXFP4, digests.

Below `arch/` in the layering (arch imports io.fp8 / io.mxfp4): nothing here imports arch. Validating a
checkpoint against its architecture lives above both, in `moe2dense_core.checkpoint`."""

from moe2dense_core.io.digests import file_sha256, files_sha256, snapshot_sha256
from moe2dense_core.io.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.resolve import resolve_model
from moe2dense_core.io.safetensors_header import TensorEntry
from moe2dense_core.io.writer import ShardedCheckpointWriter

__all__ = [
    "CheckpointReader",
    "ShardedCheckpointWriter",
    "TensorEntry",
    "dequantize_mxfp4",
    "file_sha256",
    "files_sha256",
    "quantize_mxfp4",
    "resolve_model",
    "snapshot_sha256",
]
