"""moe2dense_platform/comparison.py: the comparison table (mean and sample std over seeds), its three text
formats, the report's rows and the plots, from plain values."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from moe2dense_platform.comparison import (
    FILES,
    Comparison,
    SeedOutcome,
    StudentOutcome,
    TeacherOutcome,
    mean_and_std,
    perplexity_plot,
    report_results,
    summary_rows,
    table_csv,
    table_markdown,
    write_comparison,
)
from moe2dense_platform.reporting.data import ComparisonResults, Curve


def outcome(seed: int, perplexity: float, kl: float | None, acc: float | None = None) -> SeedOutcome:
    return SeedOutcome(
        seed=seed,
        perplexity=perplexity,
        kl_to_teacher=kl,
        mean_acc=acc,
        tokens_seen=1024,
        built_uri=f"file:///built/{seed}",
        distilled_uri=f"file:///distilled/{seed}",
        distill_run_id=f"distill-{seed}",
        evaluate_run_id=f"evaluate-{seed}",
    )


COMPARISON = Comparison(
    recipe_name="cmp",
    recipe_digest="0" * 64,
    param_rel_tol=0.01,
    teacher=TeacherOutcome(num_params=50_000, perplexity=9.5, mean_acc=None, evaluate_run_id="t"),
    students=[
        StudentOutcome(
            name="do_acp",
            kind="converted",
            num_params=30_000,
            train_tokens=1024,
            seeds=[outcome(0, 12.0, 0.5), outcome(1, 14.0, 0.7)],
            plan_run_id="plan-run",
        ),
        StudentOutcome(
            name="random",
            kind="random_init",
            num_params=30_010,
            train_tokens=1024,
            seeds=[outcome(0, 80.0, 2.0)],
        ),
    ],
)


def test_mean_and_sample_std_over_seeds():
    assert mean_and_std([12.0, 14.0]) == (13.0, statistics.stdev([12.0, 14.0]))
    assert mean_and_std([12.0]) == (12.0, None)  # one seed: no error bar
    assert mean_and_std([None, None]) == (None, None)
    assert mean_and_std([1.0, None, 3.0]) == (2.0, pytest.approx(2**0.5))


def test_the_table_has_the_teacher_then_each_student_summarised_over_its_seeds():
    rows = summary_rows(COMPARISON)
    assert [row["model"] for row in rows] == ["teacher", "do_acp", "random"]
    assert rows[0]["perplexity"] == 9.5 and rows[0]["kl_to_teacher"] is None and rows[0]["seeds"] is None
    assert rows[1] | {"perplexity_std": None} == rows[1] | {
        "kind": "converted",
        "params": 30_000,
        "train_tokens": 1024,
        "seeds": 2,
        "perplexity": 13.0,
        "perplexity_std": None,
        "kl_to_teacher": pytest.approx(0.6),
        "mean_acc": None,
        "mean_acc_std": None,
    }
    assert rows[1]["perplexity_std"] == pytest.approx(2**0.5)
    assert rows[2]["perplexity"] == 80.0 and rows[2]["perplexity_std"] is None


def test_markdown_and_csv_show_the_same_rows():
    rows = summary_rows(COMPARISON)
    markdown = table_markdown(rows).splitlines()
    assert markdown[0].startswith("| model | kind | params |") and len(markdown) == 2 + len(rows)
    assert (
        markdown[3]
        == "| do_acp | converted | 30,000 | 1,024 | 2 | 13.0000 | 1.4142 | 0.6000 | 0.1414 |  |  |"
    )
    parsed = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert [row["model"] for row in parsed] == ["teacher", "do_acp", "random"]
    assert float(parsed[1]["perplexity_std"]) == pytest.approx(2**0.5) and parsed[2]["perplexity_std"] == ""


def test_the_reports_rows_are_one_per_model_and_seed():
    results = report_results(COMPARISON)
    assert [(m.label, m.seed) for m in results.models] == [
        ("teacher", None),
        ("do_acp", 0),
        ("do_acp", 1),
        ("random", 0),
    ]
    assert results.models[1].plan_run_id == "plan-run" and results.models[3].plan_run_id is None
    assert results.models[2].distill_run_id == "distill-1"
    assert ComparisonResults.model_validate_json(results.model_dump_json()) == results


def test_the_plot_draws_each_mean_with_its_error_bar_and_every_seed():
    plot = perplexity_plot(COMPARISON)
    assert plot.data["labels"] == ["teacher", "do_acp", "random"]
    assert plot.data["mean"] == [9.5, 13.0, 80.0]
    assert plot.data["std"] == [0.0, pytest.approx(2**0.5), 0.0]
    assert plot.data["per_seed"] == [[9.5], [12.0, 14.0], [80.0]]


def test_write_comparison_writes_every_file(tmp_path):
    curves = [Curve(label="do_acp seed 0", metric="loss", steps=[1, 2], values=[3.0, 2.5])]
    written = write_comparison(COMPARISON, curves, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)  # no partial file left
    document = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert document["schema_version"] == 1 and [r["model"] for r in document["table"]][1:] == [
        "do_acp",
        "random",
    ]
    assert (tmp_path / "out" / "perplexity.png").read_bytes().startswith(b"\x89PNG")
    assert "curves.png" not in {p.name for p in write_comparison(COMPARISON, [], tmp_path / "none")}
