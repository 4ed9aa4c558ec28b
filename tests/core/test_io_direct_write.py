"""io.direct_write.DirectFile: the bytes on disk are exactly the bytes written and its digest is theirs, whichever
path (O_DIRECT or buffered) the filesystem allowed; a failed write surfaces; abort leaves nothing."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import resource
import signal

import pytest

from moe2dense_core.io import direct_write
from moe2dense_core.io.direct_write import ALIGNMENT, STAGING_BYTES, DirectFile

LENGTH_PLANS = {
    "empty": [],
    "one byte": [1],
    "one block": [ALIGNMENT],
    "a block and a byte": [ALIGNMENT + 1],
    "exactly one staging buffer": [STAGING_BYTES],
    "odd pieces across three buffers": [7, STAGING_BYTES - 3, 12345, STAGING_BYTES + 999, 1],
}


def payload(n: int, seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(min(n, 4096))) * (n // 4096 + 1)


@pytest.mark.parametrize("lengths", LENGTH_PLANS.values(), ids=LENGTH_PLANS.keys())
def test_file_holds_exactly_the_bytes_written(tmp_path, lengths):
    pieces = [payload(n, seed)[:n] for seed, n in enumerate(lengths)]
    out = DirectFile(tmp_path / "shard.bin")
    for piece in pieces:
        out.write(memoryview(piece))
    digest = out.close()
    assert (tmp_path / "shard.bin").read_bytes() == b"".join(pieces)
    assert digest == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_o_direct_is_used_where_the_filesystem_accepts_it(tmp_path):
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except (AttributeError, OSError) as error:
        pytest.skip(f"this filesystem refuses O_DIRECT ({error})")
    out = DirectFile(tmp_path / "shard.bin")
    assert out.direct
    out.close()


def test_without_o_direct_the_file_is_written_buffered(tmp_path, monkeypatch):
    """As on macOS, whose os module has no O_DIRECT."""
    monkeypatch.delattr(os, "O_DIRECT")
    data = payload(STAGING_BYTES + 10, 3)
    out = DirectFile(tmp_path / "shard.bin")
    assert not out.direct
    out.write(data)
    out.close()
    assert (tmp_path / "shard.bin").read_bytes() == data


def test_a_device_refusing_the_first_direct_write_gets_the_file_buffered(tmp_path, monkeypatch):
    """A device whose logical blocks are larger than 4 KiB answers EINVAL to the first aligned direct write
    (no such device here: the refusal is injected for writes on O_DIRECT descriptors)."""
    real_write = os.write

    def refusing_direct(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_write.os, "write", refusing_direct)
    data = payload(2 * STAGING_BYTES + 5, 4)
    out = DirectFile(tmp_path / "shard.bin")
    if not out.direct:
        pytest.skip("this filesystem refuses O_DIRECT at open already")
    out.write(data)
    out.close()
    assert not out.direct
    assert (tmp_path / "shard.bin").read_bytes() == data


def test_abort_deletes_the_file(tmp_path):
    out = DirectFile(tmp_path / "shard.bin")
    out.write(payload(STAGING_BYTES + 1, 5))
    out.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_disk_error_of_a_write_in_flight_is_raised(tmp_path):
    """The file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the background write fail with EFBIG."""
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (STAGING_BYTES, previous_limit[1]))
    try:
        out = DirectFile(tmp_path / "shard.bin")
        with pytest.raises(OSError, match="File too large"):
            for _ in range(4):
                out.write(payload(STAGING_BYTES, 6))
            out.close()
        out.abort()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert list(tmp_path.iterdir()) == []
