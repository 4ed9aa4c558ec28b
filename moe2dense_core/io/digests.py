"""Content digests: sha256 of files (streamed; many files concurrently), of canonical JSON values, and of a
checkpoint snapshot."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_CHUNK_BYTES = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 8 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def files_sha256(paths: Iterable[Path], *, workers: int | None = None) -> dict[Path, str]:
    """{path: file_sha256(path)} for every path (in the order given; a repeated path hashed once), the files
    hashed concurrently on min(#files, workers) threads — `workers` defaults to the CPUs this process may
    run on. hashlib releases the GIL while it hashes a chunk, so the threads hash on separate cores; the
    digests are exactly file_sha256's. Memory: one 8 MiB chunk per thread. The first failing file in the
    given order raises its own error (FileNotFoundError / PermissionError name the file); files not yet
    started are then skipped."""
    if workers is not None and workers < 1:
        raise ValueError(f"files_sha256: workers must be >= 1, got {workers}")
    unique = list(dict.fromkeys(Path(p) for p in paths))
    threads = min(len(unique), workers or available_cpus())
    if threads <= 1:
        return {path: file_sha256(path) for path in unique}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sha256") as pool:
        futures = [pool.submit(file_sha256, path) for path in unique]
        try:
            return {path: future.result() for path, future in zip(unique, futures, strict=True)}
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def safetensors_digests(folder: Path) -> dict[str, str]:
    """{file name: sha256} of every `*.safetensors` file in `folder` (hashed concurrently, files_sha256)."""
    return {
        path.name: digest for path, digest in files_sha256(sorted(Path(folder).glob("*.safetensors"))).items()
    }


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a container or `taskset`
    limit), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def json_sha256(value: object) -> str:
    """sha256 hex digest of the canonical JSON of `value`: sorted keys, compact separators, ASCII."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def snapshot_sha256(file_digests: dict[str, str]) -> str:
    """sha256 of the canonical JSON {file name: sha256} of a snapshot's files (order independent)."""
    return json_sha256(file_digests)
