"""Benchmark (not a test): what caching saves. Prints two numbers with their goals:

1. re-run / first-run wall time of `convert` on the same recipe (goal ≤ 0.1): the second run must
   find every stage in the cache;
2. the number of calibrations a sweep executed (goal 1), read from the sweep's MLflow stage runs.

Embedded default (ephemeral Prefect, MLflow SQLite, local artifacts) in a fresh temporary home; a
small teacher is trained first (not timed). Run:
    .venv/bin/python bench/cache_rerun.py [--teacher-steps 60] [--distill-steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--teacher-steps", type=int, default=60, help="training steps of the small teacher (untimed)"
    )
    parser.add_argument(
        "--distill-steps", type=int, default=20, help="distillation.train.max_steps of the recipe"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="moe2dense-bench-"))
    os.environ["MOE2DENSE_HOME"] = str(home)
    from moe2dense_platform.settings import Settings

    Settings().apply_environment()  # before Prefect is imported
    import torch

    torch.set_num_threads(args.threads)
    from flows.convert import convert_flow
    from flows.sweep import SweepGrid, SweepRecipe, sweep_flow
    from flows.teacher import TeacherRecipe, teacher_flow
    from moe2dense_core.teacher import TeacherModelConfig
    from moe2dense_platform.recipe_io import load_recipe
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import TAG_STAGE

    small = TeacherModelConfig(
        hidden_size=64,
        num_layers=2,
        num_experts=8,
        top_k=2,
        expert_width=32,
        head_dim=16,
        seq_len=128,
        steps=args.teacher_steps,
    )
    teacher = teacher_flow(TeacherRecipe(model=small, output_dir=home / "teachers"))
    recipe = load_recipe(
        PROJECT_ROOT / "configs" / "demo.yaml",
        [
            f"source.model={teacher.moe.path}",
            "calibration.num_tokens=8192",
            "calibration.seq_len=128",
            "distillation.seq_len=128",
            f"distillation.train.max_steps={args.distill_steps}",
            "distillation.train.warmup_steps=2",
            "evaluation.perplexity_tokens=4096",
            "evaluation.seq_len=128",
        ],
    )

    started = time.perf_counter()
    convert_flow(recipe)
    first = time.perf_counter() - started
    started = time.perf_counter()
    convert_flow(recipe)
    rerun = time.perf_counter() - started

    grid = SweepGrid(scorers=("sf", "pp", "do_acp", "random"), num_selected=(None,), groupings=("prune",))
    sweep_recipe = recipe.model_copy(
        update={"name": "bench-sweep", "calibration": recipe.calibration.model_copy(update={"seed": 1})}
    )
    result = sweep_flow(SweepRecipe(recipe=sweep_recipe, grid=grid, distill_best=0))
    client = Runtime.from_environment().client
    parent = client.get_run(result.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    calibrations = sum(run.data.tags.get(TAG_STAGE) == "calibrate" for run in children)

    print(f"convert first run: {first:.1f} s, re-run: {rerun:.1f} s, ratio {rerun / first:.3f} (goal <= 0.1)")
    print(f"sweep of {len(result.entries)} configurations executed {calibrations} calibration(s) (goal 1)")
    print(f"(state kept in {home})")


if __name__ == "__main__":
    main()
