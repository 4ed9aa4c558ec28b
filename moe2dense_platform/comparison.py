"""A comparison's results as plain values, its table (JSON, CSV, markdown), its plots. No MLflow, no Prefect.

    comparison = Comparison(recipe_name=..., teacher=TeacherOutcome(...), students=[StudentOutcome(...), ...])
    rows = summary_rows(comparison)                 # one row per model: the table every format shows
    print(table_markdown(rows))
    write_comparison(comparison, curves, folder)    # comparison.{json,csv,md}, results.json, *.png

Per student, over its n seeds (one distillation each): mean x̄ = (1/n) Σ x_s and the sample standard
deviation s = sqrt(Σ (x_s − x̄)² / (n − 1)) [defined here: the error bars], None when n = 1; for the
held-out perplexity, KL(teacher ‖ student) per token and the mean downstream accuracy. The teacher is
the first row (no seeds, no KL). perplexity.png: one bar per model at x̄ with ±s error bars and each
seed's value as a dot; curves.png: the distillation curves (reporting/plots.py `curves_plot`), one
line per student and seed. results.json: the report's view (`report_results`: reporting/data.py's
ComparisonResults, one row per model and seed), which `moe2dense report RUN_ID` reads back.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_platform.reporting.data import COMPARISON_RESULTS, ComparedModel, ComparisonResults, Curve
from moe2dense_platform.reporting.plots import Plot, curves_plot, new_figure

COMPARISON_TABLE_SCHEMA_VERSION = 1
RESULTS_FILE = Path(COMPARISON_RESULTS).name
TABLE_COLUMNS = (
    "model",
    "kind",
    "params",
    "train_tokens",
    "seeds",
    "perplexity",
    "perplexity_std",
    "kl_to_teacher",
    "kl_to_teacher_std",
    "mean_acc",
    "mean_acc_std",
)
FILES = ("comparison.json", "comparison.csv", "comparison.md", RESULTS_FILE, "perplexity.png", "curves.png")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SeedOutcome(_Frozen):
    """One student distilled with one seed, then evaluated."""

    seed: int
    perplexity: float
    kl_to_teacher: float | None
    mean_acc: float | None
    tokens_seen: int
    built_uri: str
    distilled_uri: str
    distill_run_id: str
    evaluate_run_id: str


class StudentOutcome(_Frozen):
    """A student: kind, parameter count (the core's count), token budget, one outcome per seed, and the
    run of its plan (converted students)."""

    name: str
    kind: str
    num_params: int
    train_tokens: int
    seeds: list[SeedOutcome]
    plan_run_id: str | None = None


class TeacherOutcome(_Frozen):
    num_params: int
    perplexity: float
    mean_acc: float | None
    evaluate_run_id: str


class Comparison(_Frozen):
    """What compare wrote (schema_version 1); `param_rel_tol` is the budget check's tolerance."""

    schema_version: Literal[1] = COMPARISON_TABLE_SCHEMA_VERSION
    recipe_name: str
    recipe_digest: str
    param_rel_tol: float
    teacher: TeacherOutcome
    students: list[StudentOutcome]


def mean_and_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(x̄, s) of the known values (module docstring); (None, None) when none is known."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None


def summary_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """The table: the teacher, then each student in recipe order, keyed by TABLE_COLUMNS."""
    teacher = comparison.teacher
    rows = [
        dict.fromkeys(TABLE_COLUMNS)
        | {
            "model": "teacher",
            "kind": "teacher",
            "params": teacher.num_params,
            "perplexity": teacher.perplexity,
            "mean_acc": teacher.mean_acc,
        }
    ]
    for student in comparison.students:
        row = {
            "model": student.name,
            "kind": student.kind,
            "params": student.num_params,
            "train_tokens": student.train_tokens,
            "seeds": len(student.seeds),
        }
        for column in ("perplexity", "kl_to_teacher", "mean_acc"):
            row[column], row[f"{column}_std"] = mean_and_std([getattr(s, column) for s in student.seeds])
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of `summary_rows` (empty cell: unknown or not applicable)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 9) + "|"]
    lines += ["| " + " | ".join(_cell(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """`summary_rows` as CSV with a header; numbers at full precision, unknown cells empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def comparison_json(comparison: Comparison) -> str:
    """The comparison document with its table (`table`: `summary_rows`)."""
    document = {**comparison.model_dump(mode="json"), "table": summary_rows(comparison)}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def report_results(comparison: Comparison) -> ComparisonResults:
    """The report's rows (reporting/data.py): the teacher, then every student once per seed."""
    teacher = comparison.teacher
    models = [
        ComparedModel(
            label="teacher",
            kind="teacher",
            perplexity=teacher.perplexity,
            num_params=teacher.num_params,
            mean_acc=teacher.mean_acc,
        )
    ]
    for student in comparison.students:
        models += [
            ComparedModel(
                label=student.name,
                kind=student.kind,
                perplexity=outcome.perplexity,
                num_params=student.num_params,
                kl_to_teacher=outcome.kl_to_teacher,
                mean_acc=outcome.mean_acc,
                seed=outcome.seed,
                plan_run_id=student.plan_run_id,
                distill_run_id=outcome.distill_run_id,
            )
            for outcome in student.seeds
        ]
    return ComparisonResults(models=models)


def perplexity_plot(comparison: Comparison) -> Plot:
    """Held-out perplexity per model: bar = x̄ over seeds, error bar = ±s, dots = each seed."""
    rows = summary_rows(comparison)
    labels = [row["model"] for row in rows]
    means = [row["perplexity"] for row in rows]
    errors = [row["perplexity_std"] or 0.0 for row in rows]
    per_seed = [[comparison.teacher.perplexity]] + [
        [s.perplexity for s in st.seeds] for st in comparison.students
    ]
    figure = new_figure(max(4.0, 1.1 * len(labels) + 1.5), 3.6)
    axis = figure.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    axis.bar(positions, means, yerr=errors, capsize=4, color=["#9e9e9e"] + ["#4c72b0"] * (len(labels) - 1))
    for position, values in zip(positions, per_seed, strict=True):
        axis.plot([position] * len(values), values, "o", color="black", markersize=3)
    axis.set_xticks(positions, labels, rotation=20, ha="right")
    axis.set_ylabel("held-out perplexity (± s over seeds)")
    if all(math.isfinite(m) and m > 0 for m in means):
        axis.set_yscale("log")
    return Plot(figure, {"labels": labels, "mean": means, "std": errors, "per_seed": per_seed})


def write_comparison(comparison: Comparison, curves: Sequence[Curve], folder: Path) -> list[Path]:
    """Write FILES into `folder` (created; each file atomically; curves.png only when there are curves);
    returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(comparison)
    texts = {
        "comparison.json": comparison_json(comparison),
        "comparison.csv": table_csv(rows),
        "comparison.md": table_markdown(rows),
        RESULTS_FILE: report_results(comparison).model_dump_json(indent=2),
    }
    for name, text in texts.items():
        atomic_write_text(folder / name, text)
    plots = {"perplexity.png": perplexity_plot(comparison)}
    if curves:
        plots["curves.png"] = curves_plot(curves)
    for name, plot in plots.items():
        partial = folder / f".{name}.partial"
        plot.figure.savefig(partial, dpi=100, format="png")
        partial.replace(folder / name)
    return [folder / name for name in [*texts, *plots]]


__all__ = [
    "COMPARISON_TABLE_SCHEMA_VERSION",
    "Comparison",
    "SeedOutcome",
    "StudentOutcome",
    "TABLE_COLUMNS",
    "TeacherOutcome",
    "comparison_json",
    "mean_and_std",
    "perplexity_plot",
    "report_results",
    "summary_rows",
    "table_csv",
    "table_markdown",
    "write_comparison",
]
