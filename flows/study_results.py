"""The study's results as files: study.json, tables.md and PNG plots (what docs/results.md is written from).

`write_results(record, folder)` writes whatever parts of the study have finished (teachers and routing,
then the grid, then the comparison), so an interrupted study still leaves its finished parts. Plots use
the report's renderers (moe2dense_platform/reporting/plots.py: the sweep's perplexity grid, distillation
curves) plus two drawn here: the routing load map and the comparison's intervals.

Statistics [defined here]:
- over seeds, n runs of a student: mean x̄, sample std s, and the t-based 95% confidence interval
  x̄ ± t_{0.975, n−1} · s / √n (Student's t; none for n = 1);
- main effects of the grid: for each factor (scorer, grouper, scaling, K) the mean of log perplexity
  at each of its levels over every configuration holding that level; the effect size is the range
  max − min of those means, reported as a perplexity ratio exp(range). Computed separately on the
  balanced blocks of the grid (K = k: scorer × scaling; K > k: scorer × grouper × K × scaling).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_platform.reporting.data import Curve, SweepPoint
from moe2dense_platform.reporting.plots import curves_plot, new_figure, perplexity_grid_plot


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """(x̄, half-width of the t-based 95% interval; None for one value) (module docstring)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(
        len(values)
    )


def _pm(values: Sequence[float], digits: int = 2) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def main_effects(points: Sequence[SweepPoint], factors: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{factor: {level: mean log perplexity}} over `points` (module docstring); factors map a name to a
    function of the plan giving the level."""
    effects = {}
    for factor, level_of in factors.items():
        levels: dict[str, list[float]] = {}
        for point in points:
            levels.setdefault(str(level_of(point.plan)), []).append(math.log(point.perplexity))
        effects[factor] = {level: statistics.fmean(values) for level, values in levels.items()}
    return effects


FACTORS = {
    "scorer": lambda plan: plan.scoring,
    "grouper": lambda plan: plan.grouping,
    "scaling": lambda plan: plan.scaling,
    "K": lambda plan: "k" if plan.num_selected is None else plan.num_selected,
}


def teacher_table(record: dict) -> str:
    lines = [
        "| teacher | parameters | tokens trained | seconds | tokens/s | held-out perplexity (teacher text) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, teacher in record["teachers"].items():
        training = teacher["training"]
        lines.append(
            f"| {kind} | {teacher['result']['num_parameters']:,} | {training['tokens_trained']:,} | "
            f"{training['seconds']:.0f} | {training['tokens_trained'] / training['seconds']:.0f} | "
            f"{training['heldout_perplexity']:.2f} |"
        )
    return "\n".join(lines)


def routing_table(routing: dict) -> str:
    lines = [
        f"E = {routing['num_experts']}, k = {routing['top_k']}, {routing['num_tokens']:,} held-out tokens; "
        f"log E = {routing['max_entropy']:.3f} nats (uniform router / perfectly balanced load).",
        "",
        "| layer | mean router entropy (nats) | ÷ log E | load entropy (nats) | ÷ log E | max load × E | min load × E |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    top = routing["max_entropy"]
    for layer in routing["layers"]:
        load = layer["load"]
        lines.append(
            f"| {layer['layer']} | {layer['mean_router_entropy']:.3f} | {layer['mean_router_entropy'] / top:.2f} | "
            f"{layer['load_entropy']:.3f} | {layer['load_entropy'] / top:.3f} | {layer['max_load_ratio']:.2f} | "
            f"{min(load) * len(load):.2f} |"
        )
    return "\n".join(lines)


def grid_tables(points: list[SweepPoint]) -> str:
    """Top 10, each scorer's best, and the main effects per balanced block."""
    lines = [
        f"{len(points)} configurations, best first (top 10):",
        "",
        "| rank | scorer | K | grouper | scaling | perplexity |",
        "|---:|---|---|---|---|---:|",
    ]
    for rank, point in enumerate(points[:10], start=1):
        plan = point.plan
        k = "k" if plan.num_selected is None else plan.num_selected
        lines.append(
            f"| {rank} | {plan.scoring} | {k} | {plan.grouping} | {plan.scaling} | {point.perplexity:.2f} |"
        )
    lines += [
        "",
        "Each scorer: best configuration overall and at K = k (prune):",
        "",
        "| scorer | best perplexity | its configuration | best at K = k | median of its configurations |",
        "|---|---:|---|---:|---:|",
    ]
    by_scorer: dict[str, list[SweepPoint]] = {}
    for point in points:
        by_scorer.setdefault(str(point.plan.scoring), []).append(point)
    for scorer, own in sorted(by_scorer.items(), key=lambda item: item[1][0].perplexity):
        at_k = [p.perplexity for p in own if p.plan.num_selected is None]
        lines.append(
            f"| {scorer} | {own[0].perplexity:.2f} | {own[0].label} | "
            f"{min(at_k):.2f} | {statistics.median(p.perplexity for p in own):.2f} |"
            if at_k
            else f"| {scorer} | {own[0].perplexity:.2f} | {own[0].label} | | |"
        )
    for block, members, factors in (
        ("K = k (prune)", [p for p in points if p.plan.num_selected is None], ("scorer", "scaling")),
        (
            "K > k (merging groupers)",
            [p for p in points if p.plan.num_selected is not None],
            ("scorer", "grouper", "K", "scaling"),
        ),
    ):
        if not members:
            continue
        effects = {
            factor: levels
            for factor, levels in main_effects(members, {f: FACTORS[f] for f in factors}).items()
            if len(levels) > 1
        }
        lines += [
            "",
            f"Main effects, {block} ({len(members)} configurations): perplexity ratio between the "
            "best and worst level of each factor (geometric means over the rest of the block):",
            "",
            "| factor | ratio worst / best level | best level | worst level |",
            "|---|---:|---|---|",
        ]
        for factor, levels in sorted(
            effects.items(), key=lambda item: -(max(item[1].values()) - min(item[1].values()))
        ):
            best, worst = min(levels, key=levels.get), max(levels, key=levels.get)
            lines.append(f"| {factor} | {math.exp(levels[worst] - levels[best]):.3f} | {best} | {worst} |")
    return "\n".join(lines)


def comparison_table(record: dict) -> str:
    comparison, runs = record["comparison"], record.get("runs", [])
    teacher = comparison["teacher"]
    lines = [
        "| student | kind | parameters | tokens | seeds | perplexity, distill text | perplexity, teacher text "
        "| KL(teacher ‖ student) | distill s/run | evaluate s/run |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| MoE teacher | teacher | {teacher['num_params']:,} | | | {teacher['perplexity']:.2f} | "
        f"{record['teachers']['moe']['training']['heldout_perplexity']:.2f} | | | |",
    ]
    for student in comparison["students"]:
        own = [r for r in runs if r["student"] == student["name"]]
        seeds = student["seeds"]
        kl = [s["kl_to_teacher"] for s in seeds if s["kl_to_teacher"] is not None]
        teacher_text = [r["teacher_text_perplexity"] for r in own]
        distill_s = [r["distill_seconds"] for r in own if r["distill_seconds"] is not None]
        eval_s = [r["evaluate_seconds"] for r in own if r["evaluate_seconds"] is not None]
        lines.append(
            f"| {student['name']} | {student['kind']} | {student['num_params']:,} | {student['train_tokens']:,} | "
            f"{len(seeds)} | {_pm([s['perplexity'] for s in seeds])} | {_pm(teacher_text) if teacher_text else ''} | "
            f"{_pm(kl, 4) if kl else ''} | {_pm(distill_s, 0) if distill_s else ''} | {_pm(eval_s, 0) if eval_s else ''} |"
        )
    return "\n".join(lines)


def routing_plot(routing: dict):
    """Load map [L, E] (load × E: 1 = the balanced share) and each layer's mean router entropy ÷ log E."""
    load = np.array([layer["load"] for layer in routing["layers"]]) * routing["num_experts"]
    figure = new_figure(1.2 + 0.45 * load.shape[1], 1.4 + 0.5 * load.shape[0])
    axis = figure.add_subplot(1, 1, 1)
    image = axis.imshow(load, cmap="coolwarm", vmin=0, vmax=max(2.0, float(load.max())), aspect="auto")
    for (row, column), value in np.ndenumerate(load):
        axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
    entropies = [layer["mean_router_entropy"] / routing["max_entropy"] for layer in routing["layers"]]
    axis.set_yticks(range(load.shape[0]), [f"layer {i}\nH/logE={h:.2f}" for i, h in enumerate(entropies)])
    axis.set_xticks(range(load.shape[1]))
    axis.set_xlabel("expert")
    axis.set_title("expert load × E (1 = balanced)", fontsize=9)
    figure.colorbar(image, ax=axis, label="load × E")
    return figure


def comparison_plot(record: dict):
    """Per student: perplexity on the distill text and on the teacher text, mean ± t-based 95% CI, dots
    = seeds."""
    names = [student["name"] for student in record["comparison"]["students"]]
    sides = {
        "distill text (held-out)": {
            s["name"]: [o["perplexity"] for o in s["seeds"]] for s in record["comparison"]["students"]
        },
        "teacher text (held-out)": {
            name: [r["teacher_text_perplexity"] for r in record.get("runs", []) if r["student"] == name]
            for name in names
        },
    }
    figure = new_figure(11, 0.45 * len(names) + 1.8)
    for index, (title, values) in enumerate(sides.items()):
        axis = figure.add_subplot(1, 2, index + 1)
        for row, name in enumerate(names):
            if not values[name]:
                continue
            mean, half = mean_ci(values[name])
            axis.errorbar(mean, row, xerr=half or 0, fmt="o", color="#4c72b0", capsize=3)
            axis.plot(values[name], [row] * len(values[name]), "|", color="black", markersize=8)
        axis.set_yticks(range(len(names)), names if index == 0 else [""] * len(names))
        axis.invert_yaxis()
        axis.set_xlabel("perplexity after distillation (mean ± 95% CI; ticks = seeds)")
        axis.set_title(title, fontsize=9)
    return figure


def mean_curves(runs: list[dict]) -> list[Curve]:
    """Each student's distillation curves averaged over its seeds (steps every seed logged)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        for curve in run["curves"]:
            grouped.setdefault((run["student"], curve["metric"]), []).append(
                dict(zip(curve["steps"], curve["values"], strict=True))
            )
    curves = []
    for (student, metric), series in grouped.items():
        steps = sorted(set.intersection(*(set(s) for s in series)))
        curves.append(
            Curve(
                label=student,
                metric=metric,
                steps=steps,
                values=[statistics.fmean(s[step] for s in series) for step in steps],
            )
        )
    return curves


def write_results(record: dict, folder: Path) -> list[Path]:
    """study.json, tables.md and the plots of the finished parts of `record` into `folder` (atomic each)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "study.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    sections, figures = [], {}
    if "teachers" in record:
        sections += [
            "## Teachers",
            "",
            teacher_table(record),
            "",
            "## Routing of the MoE teacher",
            "",
            routing_table(record["routing"]),
            "",
        ]
        figures["routing.png"] = routing_plot(record["routing"])
    if "grid" in record:
        points = [SweepPoint.model_validate(entry) for entry in record["grid"]]
        sections += ["## The grid (pre-distillation perplexity, teacher text)", "", grid_tables(points), ""]
        figures["grid.png"] = perplexity_grid_plot(points).figure
    if "comparison" in record:
        sections += [
            "## The comparison (one distillation budget, mean ± t-based 95% CI over seeds)",
            "",
            comparison_table(record),
            "",
        ]
        figures["comparison.png"] = comparison_plot(record)
        curves = mean_curves(record.get("runs", []))
        if curves:
            figures["curves.png"] = curves_plot(curves).figure
    seconds = record.get("seconds", {})
    if seconds:
        sections += [
            "## Wall-clock per phase",
            "",
            "| phase | seconds |",
            "|---|---:|",
            *[f"| {phase} | {value:.0f} |" for phase, value in seconds.items()],
            "",
        ]
    atomic_write_text(folder / "tables.md", "\n".join(sections))
    written = [folder / "study.json", folder / "tables.md"]
    for name, figure in figures.items():
        staging = folder / f".{name}.tmp"
        figure.savefig(staging, dpi=110, format="png")
        os.replace(staging, folder / name)
        written.append(folder / name)
    return written
