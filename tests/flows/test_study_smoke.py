"""The miniature study (flows/study.py): its config rules, the students it compares, and the whole study
end to end on real text at smoke size (`moe2dense study --quick`, embedded default, no servers)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.study import compared_students, student_name, sweep_grids
from flows.study_config import STUDY_CONFIGS, load_study_config
from flows.study_results import mean_ci
from flows.sweep import SweepEntry
from moe2dense_core.plan import PlanConfig
from moe2dense_platform.recipe import RecipeError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU = STUDY_CONFIGS / "cpu.yaml"


def entry(scoring: str, perplexity: float, k: int | None = None, grouping: str = "prune") -> SweepEntry:
    plan = PlanConfig(scoring=scoring, num_selected=k, grouping=grouping)
    return SweepEntry(plan=plan, plan_digest="d", checkpoint_uri="u", perplexity=perplexity)


def test_the_grid_prunes_at_k_and_merges_above_it_with_every_scorer_and_the_random_control() -> None:
    study = load_study_config(CPU)
    at_k, above = (grid.configs(PlanConfig(), top_k=study.teacher.top_k) for grid in sweep_grids(study))
    assert {c.grouping.name for c in at_k} == {"prune"} and {c.num_selected for c in at_k} == {None}
    assert {c.num_selected for c in above} == {8, 16} and "prune" not in {c.grouping.name for c in above}
    assert {c.scoring.name for c in at_k + above} == {
        "sf",
        "pp",
        "cp",
        "ean",
        "reap",
        "acp",
        "do_acp",
        "random",
    }
    assert len(at_k) == 8 * 2 and len(above) == 8 * 4 * 2 * 2


def test_the_best_configurations_lead_and_the_paper_students_are_not_repeated() -> None:
    study = load_study_config(CPU)
    ranked = [
        entry("do_acp", 10.0),
        entry("acp", 11.0, 8, "score_balanced"),
        entry("cp", 12.0),
        entry("sf", 13.0),
    ]
    students = compared_students(study, ranked)
    assert [s.name for s in students] == [
        "do_acp-Kk-prune-uniform",
        "acp-K8-score_balanced-uniform",
        "cp-Kk-prune-uniform",
        "sf-Kk-prune-uniform",
        "d2d",
        "random_init",
        "random_ffn",
    ]
    assert student_name(students[0].plan) == students[0].name and students[4].kind == "d2d"


def test_scale_widens_the_models_and_multiplies_the_tokens_per_step() -> None:
    study = load_study_config(CPU)
    big = study.scaled(10)
    assert big.teacher.hidden_size == 3 * study.teacher.hidden_size
    assert big.teacher.expert_width == 3 * study.teacher.expert_width
    assert big.teacher.tokens_per_step == 10 * study.teacher.tokens_per_step
    assert big.comparison.train.micro_batch_size == 10 * study.comparison.train.micro_batch_size
    assert big.teacher.steps == study.teacher.steps and big.name == "study-cpu-x10"
    with pytest.raises(RecipeError, match="scale"):
        study.scaled(0)


def test_distilling_on_the_teachers_own_text_is_refused_naming_the_field() -> None:
    with pytest.raises(RecipeError, match="text.distill") as error:
        load_study_config(CPU, ["text.distill=[wikitext2_tok_test.txt]"])
    assert "disjoint" in str(error.value)


def test_the_interval_is_students_t_over_the_seeds() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]) == (5.0, None)


@pytest.mark.slow
def test_the_quick_study_runs_every_stage_and_writes_its_tables_and_plots(shared_data, tmp_path) -> None:
    env = {**os.environ, "MOE2DENSE_DISABLE_BF16": "1", "MOE2DENSE_SHARED_DATA": str(shared_data)}
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-c",
        "from flows.cli import app; app()",
        "study",
        "--quick",
        "--home",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = tmp_path / "study" / "study-quick" / "results"
    assert {p.name for p in results.iterdir()} >= {
        "study.json",
        "tables.md",
        "routing.png",
        "grid.png",
        "comparison.png",
        "curves.png",
    }
    record = json.loads((results / "study.json").read_text())
    assert set(record["teachers"]) == {"moe", "dense"}
    assert len(record["routing"]["layers"]) == 2
    assert len(record["grid"]) == 3 + 3  # 3 scorers pruned at K = k, and merged at K = 4 by one grouper
    perplexities = [e["perplexity"] for e in record["grid"]]
    assert perplexities == sorted(perplexities)
    students = record["comparison"]["students"]
    assert [s["kind"] for s in students][-3:] == ["d2d", "random_init", "random_ffn"]
    assert all(len(s["seeds"]) == 2 for s in students)
    assert len({s["train_tokens"] for s in students}) == 1
    assert len(record["runs"]) == 2 * len(students)
    assert all(run["teacher_text_perplexity"] > 1 and run["distill_seconds"] > 0 for run in record["runs"])
    tables = (results / "tables.md").read_text()
    assert "## The comparison" in tables and "## The grid" in tables and "## Routing" in tables
