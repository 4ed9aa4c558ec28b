"""Child process of test_assembly_memory: `python -m tests.core.assembly_memory_worker TEACHER PLAN OUT`.

Assembles twice — the first run loads every lazily imported module and cache, the second is measured —
resetting the peak-RSS mark in between (`/proc/self/clear_refs` ← 5 sets VmHWM to the current VmRSS).
Prints one JSON line {"baseline": VmRSS before the measured run, "peak": VmHWM after it} in bytes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from moe2dense_core.assembly import assemble
from moe2dense_core.plan import ConversionPlan


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) * 1024


def main(teacher_dir: str, plan_file: str, out_dir: str) -> None:
    plan = ConversionPlan.model_validate_json(Path(plan_file).read_text())
    assemble(teacher_dir, plan, Path(out_dir) / "warm-up")
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status_bytes("VmRSS")
    assemble(teacher_dir, plan, Path(out_dir) / "measured")
    print(json.dumps({"baseline": baseline, "peak": status_bytes("VmHWM")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
