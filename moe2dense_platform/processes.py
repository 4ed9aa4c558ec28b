"""Server processes on this machine: started in their own session with a log file, waited for until a
check passes, stopped as a whole process group. Used by `moe2dense stack` and the integration tests.

A process started here outlives the command that started it (own session, stdin from /dev/null, output
to its log), so later commands find it again by its pid; a zombie counts as stopped (`pid_alive`: the
core's rule, moe2dense_core/process_owner.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe2dense_core.process_owner import pid_alive, stat_fields

LOCALHOST = "127.0.0.1"


class ProcessError(RuntimeError):
    """A server process exited or did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOCALHOST, port)) == 0


def log_tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


def start_process(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """Start `argv` in a new session (so stop_group reaches its children), output appended to log_path."""
    cwd.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def http_json(url: str, body: dict[str, Any] | None = None, timeout_s: float = 5.0) -> Any:
    """GET (or POST `body` as JSON to) `url` and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read() or b"null")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(
    ready: Callable[[], bool], pid: int, name: str, log_path: Path, timeout_s: float, poll_s: float = 0.25
) -> None:
    """Poll `ready()` until it is true; ProcessError (with the log tail) if `pid` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ProcessError(f"{name} (pid {pid}) exited; its log {log_path}:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(poll_s)
    raise ProcessError(
        f"{name} (pid {pid}) not ready after {timeout_s:.0f} s; its log {log_path}:\n{log_tail(log_path)}"
    )


def stop_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group led by `pid` and wait until none of it runs; SIGKILL what is left after
    `timeout_s` (a child that ignores SIGTERM, say)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reap(pid)
            if not group_alive(pid):
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` runs (zombies excluded; without /proc: its leader)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return pid_alive(pgid)
    for entry in proc.iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":  # fields 3 and 5: state, pgrp
            return True
    return False


def reap(pid: int) -> None:
    """Collect the exit status of `pid` when it is this process's own child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


__all__ = [
    "LOCALHOST",
    "ProcessError",
    "free_port",
    "http_json",
    "http_ok",
    "log_tail",
    "pid_alive",
    "port_in_use",
    "start_process",
    "group_alive",
    "stop_group",
    "wait_until",
]
