"""The output folder of an assembly: checked before any work, written in a staging folder, published by rename.

Guarantees: nothing half-written is ever visible at `out_dir`; if assembly fails, whatever was at
`out_dir` before is left exactly as it was; an existing non-empty folder is replaced only with
`overwrite=True`, and never when it is the teacher's own folder (or contains it, or lies inside it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moe2dense_core.errors import OutputDirError

FOLDER_MODE = 0o755
"""Permissions of the published folder (mkdtemp creates 0o700; a model folder is meant to be shared)."""


def check_output_dir(out_dir: str | Path, *, overwrite: bool, source_dir: str | Path) -> Path:
    """Validate `out_dir` before anything expensive; returns it as an absolute Path."""
    out = Path(out_dir).expanduser().absolute()
    source = Path(source_dir).expanduser().resolve()
    resolved = out.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        raise OutputDirError(
            f"out_dir {out}: overlaps the teacher checkpoint folder {source}; choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"out_dir {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"out_dir {out}: exists and is not empty; pass overwrite=True to replace it")
    return out


@contextmanager
def staged_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside `out_dir`; on success it replaces `out_dir` atomically.

    On any exception the staging folder is deleted and `out_dir` is untouched. A previous `out_dir`
    is first renamed aside, the staging folder renamed into place, then the old one removed, so at
    every instant `out_dir` is either the old complete folder or the new complete one.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(FOLDER_MODE)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out_dir.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.previous-", dir=out_dir.parent))
        os.replace(out_dir, previous / out_dir.name)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
