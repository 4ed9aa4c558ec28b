"""files_sha256: the digests file_sha256 (and hashlib over the whole bytes) gives, the files hashed on
several threads at once, and a failing file named in the error."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

import moe2dense_core.io.digests as digests_module
from moe2dense_core.io.digests import file_sha256, files_sha256


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """An empty file, a small one, and two spanning several 8 MiB read chunks (one ending mid-chunk)."""
    rng = np.random.default_rng(0)
    sizes = {"empty.json": 0, "config.json": 123, "a.safetensors": 9 * 2**20 + 7, "b.safetensors": 16 * 2**20}
    paths = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        paths.append(tmp_path / name)
    return paths


@pytest.mark.parametrize("workers", [None, 1, 2, 8])
def test_digests_equal_the_serial_ones_in_the_given_order(files: list[Path], workers: int | None) -> None:
    digests = files_sha256(files, workers=workers)
    assert list(digests) == files
    assert digests == {p: file_sha256(p) for p in files}
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_repeated_path_is_hashed_once(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[Path] = []
    real = digests_module.file_sha256
    monkeypatch.setattr(digests_module, "file_sha256", lambda p: hashed.append(p) or real(p))
    digests = files_sha256([files[1], files[0], files[1]], workers=2)
    assert digests == {files[1]: real(files[1]), files[0]: real(files[0])}
    assert sorted(hashed) == sorted(files[:2])


def test_files_are_hashed_at_the_same_time(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hash waits at a barrier for the other before it runs: serial hashing would break it."""
    barrier = threading.Barrier(2, timeout=10)
    real = digests_module.file_sha256

    def after_both_started(path: Path) -> str:
        barrier.wait()
        return real(path)

    monkeypatch.setattr(digests_module, "file_sha256", after_both_started)
    assert files_sha256(files[2:], workers=2) == {p: real(p) for p in files[2:]}


def test_a_missing_file_raises_naming_it(files: list[Path]) -> None:
    missing = files[0].parent / "model-00002-of-00003.safetensors"
    for workers in (1, 4):
        with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors") as raised:
            files_sha256([*files, missing], workers=workers)
        assert raised.value.filename == str(missing)


def test_a_folder_raises_naming_it(tmp_path: Path, files: list[Path]) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        files_sha256([folder, *files], workers=2)
    assert raised.value.filename == str(folder)


def test_no_files_and_bad_worker_counts(files: list[Path]) -> None:
    assert files_sha256([]) == {}
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        files_sha256(files, workers=0)
