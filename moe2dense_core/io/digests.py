"""Content digests: sha256 of files (streamed), of canonical JSON values, and of a checkpoint snapshot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK_BYTES = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 8 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def json_sha256(value: object) -> str:
    """sha256 hex digest of the canonical JSON of `value`: sorted keys, compact separators, ASCII."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def snapshot_sha256(file_digests: dict[str, str]) -> str:
    """sha256 of the canonical JSON {file name: sha256} of a snapshot's files (order independent)."""
    return json_sha256(file_digests)
