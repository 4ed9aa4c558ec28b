"""Assembly's peak memory is bounded by one layer's work, not by the checkpoint (assembly/checkpoint.py).

A 16-layer teacher with 32 experts of width 256 per layer (≈ 410 MB float32) is converted keeping 4
experts per layer in a child process; its peak RSS above the baseline must stay under 15% of the
checkpoint. Measured: 13 MB (3%) streaming; 96 MB (24%) with the former writer, which buffered a whole
output shard and kept every shard's memory map open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.core.test_assembly_families import pruning_plan
from tests.fixtures.tiny_moe import build_tiny_moe

BOUND = 0.15
"""Peak RSS above the baseline, as a fraction of the checkpoint's bytes on disk."""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_a_small_fraction_of_the_checkpoint(tmp_path: Path) -> None:
    teacher_dir = build_tiny_moe(
        "qwen3_moe",
        tmp_path / "teacher",
        num_experts=32,
        hidden_size=256,
        moe_intermediate_size=256,
        num_hidden_layers=16,
        max_window_layers=16,
        max_shard_size="50MB",
    )
    checkpoint_bytes = sum(path.stat().st_size for path in teacher_dir.glob("*.safetensors"))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(pruning_plan("qwen3_moe", teacher_dir, [1, 9, 17, 30]).model_dump_json())
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.core.assembly_memory_worker",
            str(teacher_dir),
            str(plan_file),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == 0, child.stderr[-3000:]
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    above_baseline = measured["peak"] - measured["baseline"]
    assert checkpoint_bytes > 400e6
    assert above_baseline < BOUND * checkpoint_bytes, (above_baseline / 1e6, checkpoint_bytes / 1e6)
