"""moe2dense_platform/processes.py on real processes: a whole group is stopped, a dead server fails with its log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moe2dense_platform.processes import (
    ProcessError,
    group_alive,
    pid_alive,
    start_process,
    stop_group,
    wait_until,
)


def test_stop_group_stops_the_leader_and_its_children_even_when_they_ignore_sigterm(tmp_path: Path) -> None:
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    log = tmp_path / "group.log"
    leader = start_process([sys.executable, "-c", script], {}, tmp_path, log)
    wait_until(lambda: log.read_text().strip() != "", leader.pid, "group", log, timeout_s=30)
    child = int(log.read_text().split()[0])
    assert pid_alive(leader.pid) and pid_alive(child)
    stop_group(leader.pid, timeout_s=2)
    assert not group_alive(leader.pid)
    assert not pid_alive(leader.pid) and not pid_alive(child)


def test_a_server_that_exits_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    process = start_process(
        [sys.executable, "-c", "import sys; print('port 4200 is taken'); sys.exit(3)"], {}, tmp_path, log
    )
    with pytest.raises(ProcessError, match=r"(?s)bad \(pid \d+\) exited.*port 4200 is taken"):
        wait_until(lambda: False, process.pid, "bad", log, timeout_s=30)
