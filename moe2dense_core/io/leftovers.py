"""Leftovers of killed processes: a temporary folder names its owner, so a later run removes it only once
that owner is gone, never while a live process still writes in it.

Owner record [defined here]: `OWNER_FILE` inside the folder, written (atomically) right after the folder
is created — JSON {host, boot_id, pid_namespace, pid, start_ticks} of the creating process
(moe2dense_core/process_owner.py says what each part is and when an owner is gone).

`is_leftover(folder, legacy_age_s)` is true when
  - its record names an owner that is gone (checkable from here, i.e. on this machine, boot and pid
    namespace, and its process ended: moe2dense_core/process_owner.py); or
  - it has no readable record (an older version made it, or the kill came before the record was written)
    and nothing under it changed for `legacy_age_s` (newest mtime of the folder and everything below it).
A record from another host, another boot or another pid namespace, or made where /proc is missing, is
never a leftover here: its owner cannot be checked from this process, so such a folder is kept (and
reported by whoever sweeps).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.process_owner import Owner, current_owner

OWNER_FILE = ".moe2dense-owner.json"
LEGACY_AGE_S = 24 * 3600.0
"""A folder without an owner record is a leftover once nothing under it changed for this long."""


def write_owner(folder: Path) -> None:
    """Record this process as the owner of `folder` (call right after creating it)."""
    atomic_write_text(folder / OWNER_FILE, json.dumps(asdict(current_owner())))


def read_owner(folder: Path) -> Owner | None:
    """The owner record of `folder`; None when it has none (or an unreadable one)."""
    try:
        return Owner(**json.loads((folder / OWNER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def newest_mtime(folder: Path) -> float:
    """The newest modification time of `folder` and everything below it (links not followed)."""
    newest = folder.lstat().st_mtime
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def is_leftover(folder: Path, legacy_age_s: float = LEGACY_AGE_S) -> bool:
    """Whether `folder` was left by a process that is gone (module docstring); False if it vanished."""
    owner = read_owner(folder)
    if owner is not None:
        return owner.gone()
    try:
        return time.time() - newest_mtime(folder) > legacy_age_s
    except FileNotFoundError:
        return False


def describe_owner(folder: Path) -> str:
    """`host pid N` of the folder's recorded owner, or `no owner record`, for messages."""
    owner = read_owner(folder)
    return "no owner record" if owner is None else f"host {owner.host} pid {owner.pid}"
