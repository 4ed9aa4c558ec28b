"""The process that owns an MLflow run, as run tags: written when a run is created
(moe2dense_platform/tracking.py), read back to decide whether a RUNNING run is orphaned
(moe2dense_platform/orphan_runs.py). What each part is, and when an owner is provably gone, is the core's
rule (moe2dense_core/process_owner.py).

    moe2dense.owner.host           socket.gethostname()
    moe2dense.owner.boot_id        /proc/sys/kernel/random/boot_id
    moe2dense.owner.pid_namespace  the link /proc/self/ns/pid, e.g. `pid:[4026531836]`
    moe2dense.owner.pid            os.getpid()
    moe2dense.owner.start_ticks    field 22 of /proc/<pid>/stat: clock ticks after boot when it started

A part /proc did not give has no tag; a start time that is not a whole number reads as unknown, so such an
owner is never checkable (never judged gone).
"""

from __future__ import annotations

from collections.abc import Mapping

from moe2dense_core.process_owner import Owner

TAG_OWNER_HOST = "moe2dense.owner.host"
TAG_OWNER_BOOT_ID = "moe2dense.owner.boot_id"
TAG_OWNER_PID_NAMESPACE = "moe2dense.owner.pid_namespace"
TAG_OWNER_PID = "moe2dense.owner.pid"
TAG_OWNER_START_TICKS = "moe2dense.owner.start_ticks"


def owner_tags(owner: Owner) -> dict[str, str]:
    """The run tags naming `owner` (module docstring); parts that are None are left out."""
    tags = {
        TAG_OWNER_HOST: owner.host,
        TAG_OWNER_BOOT_ID: owner.boot_id,
        TAG_OWNER_PID_NAMESPACE: owner.pid_namespace,
        TAG_OWNER_PID: owner.pid,
        TAG_OWNER_START_TICKS: owner.start_ticks,
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def owner_from_tags(tags: Mapping[str, str]) -> Owner | None:
    """The owner a run's tags name; None for a run without a host and a positive pid (made before owners
    were tagged)."""
    host, pid = tags.get(TAG_OWNER_HOST), _whole_number(tags.get(TAG_OWNER_PID))
    if host is None or pid is None or pid < 1:
        return None
    return Owner(
        host=host,
        boot_id=tags.get(TAG_OWNER_BOOT_ID),
        pid_namespace=tags.get(TAG_OWNER_PID_NAMESPACE),
        pid=pid,
        start_ticks=_whole_number(tags.get(TAG_OWNER_START_TICKS)),
    )


def _whole_number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdecimal() else None
