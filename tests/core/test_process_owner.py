"""The one owner rule (moe2dense_core/process_owner.py): an owner is judged only from its own host, boot
and pid namespace with its start time known, and is gone once its pid ends, turns zombie or is reused;
a stopped process stays alive. Real child processes, real /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moe2dense_core.process_owner import Owner, current_owner, pid_alive, process_start_ticks, stat_fields

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="process owners need Linux /proc"
)

FREE_PID = 2**22 + 7  # above the largest pid_max: no such process


def test_this_process_is_a_checkable_live_owner():
    here = current_owner()
    assert (here.host, here.pid) == (socket.gethostname(), os.getpid())
    assert None not in (here.boot_id, here.pid_namespace)
    assert here.start_ticks == process_start_ticks(here.pid)
    assert here.checkable(here) and not here.gone(here)


def test_an_owner_is_judged_only_where_its_pid_means_it():
    here = current_owner()
    elsewhere = [
        replace(here, host="another-host"),
        replace(here, boot_id="another-boot"),
        replace(here, pid_namespace="pid:[1]"),  # same host name and boot: another container
        replace(here, boot_id=None),
        replace(here, start_ticks=None),
    ]
    for owner in elsewhere:
        assert not owner.checkable(here) and not replace(owner, pid=FREE_PID).gone(here)
    assert not here.checkable(replace(here, pid_namespace=None))  # this side without /proc: nothing judged
    assert replace(here, pid=FREE_PID).gone(here)


def test_an_owner_is_gone_once_its_pid_ends_turns_zombie_or_is_reused():
    here = current_owner()
    assert replace(here, start_ticks=here.start_ticks + 1).gone()  # our pid, another process
    child = subprocess.Popen(["sleep", "60"])
    owner = replace(here, pid=child.pid, start_ticks=process_start_ticks(child.pid))
    assert not owner.gone()
    os.kill(child.pid, signal.SIGSTOP)
    assert pid_alive(child.pid) and not owner.gone()  # a stopped process still lives
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stat_fields(child.pid)[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not pid_alive(child.pid) and owner.gone()  # killed, not yet reaped: a zombie runs nothing
    child.wait()
    assert owner.gone()


def test_a_pid_or_start_time_of_the_wrong_type_is_refused():
    here = current_owner()
    with pytest.raises(ValueError, match="pid must be a positive integer"):
        replace(here, pid=str(here.pid))
    with pytest.raises(ValueError, match="pid must be a positive integer"):
        replace(here, pid=0)
    with pytest.raises(ValueError, match="start_ticks must be an integer"):
        Owner(here.host, here.boot_id, here.pid_namespace, here.pid, str(here.start_ticks))
