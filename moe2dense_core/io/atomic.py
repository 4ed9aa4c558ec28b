"""Atomic file writes: write a temp file beside the target, then os.replace it into place.

A reader sees either the previous file or the complete new one, never a partial write; on any
failure the temp file is deleted and the target is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temp path in target's folder; on success os.replace(temp, target), else delete it."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically (see module docstring)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
