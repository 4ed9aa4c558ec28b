"""Benchmark (not a test): hashing a snapshot's files one after another vs concurrently.

Writes --files random files of --size-mb MiB each (a teacher's shards) into a temporary folder, then
alternately times, --repeats times each, the serial loop {p: file_sha256(p)} (what Teacher.file_digests did)
and io.digests.files_sha256 (one thread per file, at most the CPUs this process may run on); the files stay
in the page cache, so both measure hashing, not the disk. Prints the best time of each, side by side, and
speedup = serial / concurrent against the ideal files / ceil(files / threads) (one file's sha256 is
sequential, so 3 equal files on 2 threads take 2 files' time: 1.5): goal ≥ 0.75 × ideal. "cores busy" =
process CPU seconds / wall seconds of the best pass: near 1 for the concurrent pass means the machine gave
the threads one core between them (a loaded machine), not that they ran one after another. The digests must
be equal. The folder is removed at the end. Run:
    .venv/bin/python bench/hash_snapshot.py [--files 3] [--size-mb 300] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from moe2dense_core.io.digests import available_cpus, file_sha256, files_sha256  # noqa: E402

_WRITE_CHUNK = 8 * 2**20
T = TypeVar("T")


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for start in range(0, size, _WRITE_CHUNK):
            f.write(os.urandom(min(_WRITE_CHUNK, size - start)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=3, help="number of files (a snapshot's shards)")
    parser.add_argument("--size-mb", type=int, default=300, help="MiB per file")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each way (best kept)")
    parser.add_argument("--workers", type=int, default=None, help="files_sha256 workers (default: the CPUs)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary folder goes")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="moe2dense-hash-", dir=args.workdir))
    try:
        paths = [folder / f"model-{i + 1:05d}-of-{args.files:05d}.safetensors" for i in range(args.files)]
        for path in paths:
            write_random_file(path, args.size_mb * 2**20)
        serial_s, concurrent_s = [], []
        for _ in range(args.repeats):
            serial = timed(serial_s, lambda: {p: file_sha256(p) for p in paths})
            concurrent = timed(concurrent_s, lambda: files_sha256(paths, workers=args.workers))
            if concurrent != serial:
                raise SystemExit("files_sha256 digests differ from the serial file_sha256 ones")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    cpus = available_cpus()
    threads = min(args.files, args.workers or cpus)
    ideal = args.files / math.ceil(args.files / threads)
    total_gb = args.files * args.size_mb * 2**20 / 1e9
    (best_serial, _), (best_concurrent, _) = min(serial_s), min(concurrent_s)
    speedup = best_serial / best_concurrent
    print(f"{args.files} files x {args.size_mb} MiB = {total_gb:.2f} GB; {cpus} CPUs, {threads} threads")
    for label, runs in (("serial", serial_s), ("concurrent", concurrent_s)):
        wall, cpu = min(runs)
        print(
            f"{label:<10} {wall:6.2f} s  {total_gb / wall:5.2f} GB/s  cores busy {cpu / wall:4.2f}  "
            f"(all: {', '.join(f'{w:.2f}' for w, _ in runs)} s)"
        )
    print(
        f"sha256 speedup serial / concurrent = {speedup:.2f}, ideal {ideal:.2f} "
        f"(goal ≥ {0.75 * ideal:.2f}, {'met' if speedup >= 0.75 * ideal else 'MISSED'})"
    )


def timed(runs: list[tuple[float, float]], work: Callable[[], T]) -> T:
    """work(), appending its (wall seconds, process CPU seconds) to `runs`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return result


if __name__ == "__main__":
    main()
