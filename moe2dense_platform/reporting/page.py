"""The report's HTML page: tables of lineage, evaluations and sweep configurations, then the figures.

Self-contained: the only links are the figures' PNG files and report.json, relative to the page, so the
folder can be opened from disk, from the artifact store or from MLflow's artifact view alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from typing import TYPE_CHECKING

from moe2dense_platform.reporting.data import EvalRow, ReportData, SweepPoint

if TYPE_CHECKING:
    from moe2dense_platform.reporting.render import RenderedFigure

STYLE = (
    "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;text-align:left;"
    "border-bottom:1px solid #ddd}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "code{font-size:.9em}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;margin-bottom:2em}"
)


def _number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(cell)}</td>' if i in numeric else f"<td>{escape(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def lineage_table(lineage: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in lineage.items()
    )
    return f"<h2>Lineage</h2><table>{rows}</table>"


def evaluation_table(rows: Sequence[EvalRow]) -> str:
    """Columns that some row fills; `× teacher` = perplexity / the teacher's when a teacher row exists."""
    teacher = next((row for row in rows if row.kind == "teacher"), None)
    columns: list[tuple[str, Callable[[EvalRow], str], bool]] = [
        ("model", lambda r: r.label, False),
        ("kind", lambda r: r.kind or "", False),
        ("seed", lambda r: "" if r.seed is None else str(r.seed), True),
        ("parameters", lambda r: "" if r.num_params is None else f"{r.num_params:,}", True),
        ("held-out perplexity", lambda r: _number(r.perplexity), True),
        ("× teacher", lambda r: _number(r.perplexity / teacher.perplexity) if teacher else "", True),
        ("KL to teacher", lambda r: _number(r.kl_to_teacher, 4), True),
        ("mean accuracy", lambda r: _number(r.mean_acc, 4), True),
    ]
    shown = [c for c in columns if any(c[1](row) for row in rows)]
    table = _table(
        [name for name, _, _ in shown],
        [[cell(row) for _, cell, _ in shown] for row in rows],
        {i for i, (_, _, numeric) in enumerate(shown) if numeric},
    )
    return f"<h2>Evaluation</h2>{table}"


def sweep_table(points: Sequence[SweepPoint]) -> str:
    rows = [
        [
            str(rank),
            str(p.plan.scoring),
            "k" if p.plan.num_selected is None else str(p.plan.num_selected),
            str(p.plan.grouping),
            str(p.plan.scaling),
            _number(p.perplexity),
            _number(p.distilled_perplexity),
            _number(p.distilled_mean_acc, 4),
        ]
        for rank, p in enumerate(points)
    ]
    headers = [
        "rank",
        "scorer",
        "K",
        "grouping",
        "scaling",
        "perplexity",
        "distilled perplexity",
        "distilled mean accuracy",
    ]
    title = f"<h2>Sweep: {len(points)} configurations, best first</h2>"
    return title + _table(headers, rows, {0, 5, 6, 7})


def figure_block(figure: RenderedFigure) -> str:
    return (
        f'<h2>{escape(figure.title)}</h2><figure><img src="{escape(figure.file)}" alt="{escape(figure.title)}"'
        f' width="{figure.width_px}"><figcaption>{escape(figure.caption)}</figcaption></figure>'
    )


def report_page(data: ReportData, figures: Sequence[RenderedFigure], data_file: str) -> str:
    parts: list[str] = [f"<h1>moe2dense {data.kind}: {escape(data.title)}</h1>"]
    if data.run_id:
        parts.append(f"<p>MLflow run <code>{escape(data.run_id)}</code></p>")
    if data.lineage:
        parts.append(lineage_table(data.lineage))
    if data.evaluations:
        parts.append(evaluation_table(data.evaluations))
    if data.sweep:
        parts.append(sweep_table(data.sweep))
    parts.extend(figure_block(figure) for figure in figures)
    parts.append(
        f'<p>The numbers behind every figure: <a href="{escape(data_file)}">{escape(data_file)}</a></p>'
    )
    body = "\n".join(parts)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>moe2dense: {escape(data.title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
