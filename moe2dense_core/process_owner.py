"""Which process owns a thing, and whether that process is provably gone [defined here]: the one rule behind
removing a killed process's temporary folders (moe2dense_core/io/leftovers.py) and ending its MLflow runs
KILLED (moe2dense_platform/orphan_runs.py, through moe2dense_platform/run_owner.py).

An `Owner` is (host, boot_id, pid_namespace, pid, start_ticks): socket.gethostname(),
/proc/sys/kernel/random/boot_id, the link /proc/self/ns/pid, the pid, and field 22 of /proc/<pid>/stat
(the start time in clock ticks since boot, which tells a reused pid apart). A part /proc does not give is
None.

A pid names one process only within one pid namespace of one boot of one machine, and a host name can be
shared (two machines named alike, a container with the host's network and its own pids). So an owner is
*checkable* from here when host, boot id and pid namespace all equal this process's and its start time is
recorded; a None anywhere (on either side) makes it not checkable. A checkable owner is *gone* when
  - its pid names no process, or a zombie (killed, not yet reaped: it runs nothing); or
  - its pid names a process that started at another tick (the pid was reused).
A stopped process (SIGSTOP) is alive. A pid whose /proc/<pid>/stat cannot be read (/proc mounted with
hidepid, or the process ended between the two looks) counts as running: not proven gone, so kept until a
later look. An owner that is not checkable is never gone here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

START_TICKS_FIELD = 22
"""`starttime` in proc(5): the 1-based field of /proc/<pid>/stat holding the start in clock ticks."""


@dataclass(frozen=True)
class Owner:
    """A process and the place its pid means something (module docstring)."""

    host: str
    boot_id: str | None
    pid_namespace: str | None
    pid: int
    start_ticks: int | None

    def __post_init__(self) -> None:
        if type(self.pid) is not int or self.pid < 1:
            raise ValueError(f"owner pid must be a positive integer, got {self.pid!r}")
        if self.start_ticks is not None and type(self.start_ticks) is not int:
            raise ValueError(f"owner start_ticks must be an integer or None, got {self.start_ticks!r}")

    def checkable(self, here: Owner | None = None) -> bool:
        """True when `here` (default: `current_owner()`) can judge this owner's pid: same host, boot and pid
        namespace, all known, and a recorded start time."""
        here = current_owner() if here is None else here
        place = (self.host, self.boot_id, self.pid_namespace)
        here_place = (here.host, here.boot_id, here.pid_namespace)
        return None not in place and self.start_ticks is not None and place == here_place

    def gone(self, here: Owner | None = None) -> bool:
        """True when this owner is checkable from `here` and its process ended (module docstring)."""
        if not self.checkable(here):
            return False
        if not pid_alive(self.pid):
            return True
        started = process_start_ticks(self.pid)
        return started is not None and started != self.start_ticks


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (field n is item n - 3), None when unreadable. The command name
    (field 2) may hold spaces and parentheses, so fields are counted after its last `)`."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); None if unreadable."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[START_TICKS_FIELD - 3])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs: a zombie counts as ended, a stopped process and one whose state cannot be read
    as running (module docstring)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = stat_fields(pid)
    return fields is None or fields[0] != "Z"


def current_owner() -> Owner:
    """This process as an owner."""
    pid = os.getpid()
    try:
        namespace: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return Owner(socket.gethostname(), boot_id, namespace, pid, process_start_ticks(pid))
