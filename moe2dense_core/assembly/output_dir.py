"""The output folder of an assembly: checked before any work, written in a staging folder, published by rename.

Guarantees: nothing half-written is ever visible at `out_dir`; if assembly fails, whatever was at
`out_dir` before is left exactly as it was; an existing non-empty folder is replaced only with
`overwrite=True`, and never when it is the teacher's own folder (or contains it, or lies inside it).

Folders beside `out_dir` [defined here]: the new checkpoint is written in `.{name}.staging-XXXX/{name}`;
publishing moves an existing `out_dir` to `.{name}.previous-XXXX/{name}`, the staged one into place, then
deletes the previous one. Each of these wrappers holds its creator's owner record
(moe2dense_core/io/leftovers.py). A SIGKILLed assembly (OOM, eviction) leaves them behind, and can leave
`out_dir` missing if it died between the two renames — its old content then lies in `.previous-`.
`check_output_dir` first puts that right (`recover_output_dir`): when `out_dir` is missing it moves the
old content of the newest leftover `.previous-` folder back (the killed run never finished, so the
folder is as before it, as promised above); then it deletes every leftover wrapper. A wrapper whose owner
lives, or runs on another machine, is kept; a `.previous-` one holding a checkpoint is never deleted
while `out_dir` is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moe2dense_core.errors import OutputDirError
from moe2dense_core.io.leftovers import LEGACY_AGE_S, OWNER_FILE, describe_owner, is_leftover, write_owner

LOG = logging.getLogger(__name__)
FOLDER_MODE = 0o755
"""Permissions of the published folder (mkdir honours the umask; a model folder is meant to be shared)."""
STAGING, PREVIOUS = "staging", "previous"


def check_output_dir(out_dir: str | Path, *, overwrite: bool, source_dir: str | Path) -> Path:
    """Validate `out_dir` before anything expensive, after `recover_output_dir`; returns it absolute."""
    out = Path(out_dir).expanduser().absolute()
    source = Path(source_dir).expanduser().resolve()
    resolved = out.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        raise OutputDirError(
            f"out_dir {out}: overlaps the teacher checkpoint folder {source}; choose another folder"
        )
    if out.name == OWNER_FILE:
        raise OutputDirError(
            f"out_dir {out}: {OWNER_FILE} is reserved for the owner records of staging folders"
        )
    recover_output_dir(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"out_dir {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"out_dir {out}: exists and is not empty; pass overwrite=True to replace it")
    return out


def _wrappers(out_dir: Path, kind: str) -> list[Path]:
    """The `.{name}.{kind}-XXXX` folders beside `out_dir`."""
    prefix = f".{out_dir.name}.{kind}-"
    if not out_dir.parent.is_dir():
        return []
    return [path for path in out_dir.parent.iterdir() if path.name.startswith(prefix) and path.is_dir()]


def recover_output_dir(out_dir: Path, legacy_age_s: float = LEGACY_AGE_S) -> None:
    """Restore `out_dir` from, then delete, what killed assemblies left beside it (module docstring)."""
    leftovers: dict[str, list[Path]] = {STAGING: [], PREVIOUS: []}
    for kind, found in leftovers.items():
        for wrapper in _wrappers(out_dir, kind):
            if is_leftover(wrapper, legacy_age_s):
                found.append(wrapper)
            else:
                LOG.info(
                    "kept %s beside %s: %s, not known to be gone",
                    wrapper.name,
                    out_dir,
                    describe_owner(wrapper),
                )
    restorable = [wrapper for wrapper in leftovers[PREVIOUS] if (wrapper / out_dir.name).exists()]
    if restorable and not out_dir.exists():  # _restore raises unless out_dir exists afterwards
        _restore(max(restorable, key=lambda path: path.stat().st_mtime) / out_dir.name, out_dir)
    for wrapper in leftovers[STAGING] + leftovers[PREVIOUS]:
        LOG.info("removing %s beside %s, left by a killed assembly", wrapper.name, out_dir)
        shutil.rmtree(wrapper, ignore_errors=True)


def _restore(previous: Path, out_dir: Path) -> None:
    """Move `previous` (a killed run's moved-aside output) back to `out_dir`, unless another run just did."""
    LOG.warning(
        "restoring %s from %s: an assembly was killed while replacing it", out_dir, previous.parent.name
    )
    try:
        os.rename(previous, out_dir)
    except OSError as err:
        if not out_dir.exists():
            raise OutputDirError(f"out_dir {out_dir}: cannot restore it from {previous}: {err}") from err


def _owned_wrapper(out_dir: Path, kind: str) -> Path:
    wrapper = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{kind}-", dir=out_dir.parent))
    write_owner(wrapper)
    return wrapper


@contextmanager
def staged_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside `out_dir`; on success it replaces `out_dir` atomically.

    On any exception the staging folder is deleted and `out_dir` is untouched. A previous `out_dir`
    is first renamed aside, the staging folder renamed into place, then the old one removed, so at
    every instant `out_dir` is either the old complete folder or the new complete one (or, only if
    this process is killed between those two renames, missing: `recover_output_dir` restores it).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _owned_wrapper(out_dir, STAGING)
    staging = wrapper / out_dir.name
    try:
        staging.mkdir()
        staging.chmod(FOLDER_MODE)
        yield staging
    except BaseException:
        shutil.rmtree(wrapper, ignore_errors=True)
        raise
    if out_dir.exists():
        previous = _owned_wrapper(out_dir, PREVIOUS)
        os.replace(out_dir, previous / out_dir.name)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
    shutil.rmtree(wrapper, ignore_errors=True)
