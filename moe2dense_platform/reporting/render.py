"""ReportData → a report folder: index.html, one PNG per figure and report.json, written all at once.

    report = render_report(data, Path("reports/<run id>"))   # report.index: the page

Figures drawn (plots.py), each only when there is data for it:

    perplexity-grid.png   sweep: scorer × K per (grouping, scaling), pre-distillation perplexity
    kept-experts.png      plans: layers × experts, dropped / group id
    scores.png            plans: layers × experts, the scorer's scores, kept experts dotted
    distillation.png      curves: loss and KL against the optimizer step

report.json (schema_version REPORT_SCHEMA_VERSION): the ReportData, and per figure its file, title,
panel count, pixel size, sha256 and the arrays drawn; and the sha256 of index.html.
The folder is built in a hidden sibling and renamed into place (a folder already there is replaced
only then): a reader sees the previous report or the whole new one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moe2dense_core.io.digests import file_sha256
from moe2dense_platform.reporting import plots
from moe2dense_platform.reporting.data import REPORT_SCHEMA_VERSION, ReportData
from moe2dense_platform.reporting.page import report_page

INDEX = "index.html"
DATA_FILE = "report.json"
DPI = 100


@dataclass(frozen=True)
class FigureSpec:
    file: str
    title: str
    caption: str
    draw: Callable[[ReportData], plots.Plot]
    wanted: Callable[[ReportData], bool]


FIGURES = (
    FigureSpec(
        "perplexity-grid.png",
        "Sweep: perplexity by scorer and K",
        "Held-out perplexity of each assembled student before distillation, one panel per grouping and "
        "scaling (log colour scale; the lowest in bold; blank: not in the grid).",
        lambda d: plots.perplexity_grid_plot(d.sweep),
        lambda d: bool(d.sweep),
    ),
    FigureSpec(
        "kept-experts.png",
        "Kept experts per layer",
        "Layers × experts: grey = dropped; a colour and number = the dense block (group) the expert is "
        "merged into.",
        lambda d: plots.kept_experts_plot(d.plans),
        lambda d: bool(d.plans),
    ),
    FigureSpec(
        "scores.png",
        "Expert scores",
        "Layers × experts: the scorer's score, min–max normalised within each layer; dots: kept experts.",
        lambda d: plots.scores_plot(d.plans),
        lambda d: bool(d.plans),
    ),
    FigureSpec(
        "distillation.png",
        "Distillation",
        "Distillation loss and KL(teacher ‖ student) per token against the optimizer step.",
        lambda d: plots.curves_plot(d.curves),
        lambda d: bool(d.curves),
    ),
)


@dataclass(frozen=True)
class RenderedFigure:
    file: str
    title: str
    caption: str
    panels: int
    width_px: int
    height_px: int
    sha256: str
    data: dict[str, Any]


@dataclass(frozen=True)
class RenderedReport:
    folder: Path
    figures: list[RenderedFigure]

    @property
    def index(self) -> Path:
        return self.folder / INDEX


def save_figure(spec: FigureSpec, data: ReportData, folder: Path) -> RenderedFigure:
    plot = spec.draw(data)
    path = folder / spec.file
    plot.figure.savefig(path, dpi=DPI, format="png")
    width, height = (round(inches * DPI) for inches in plot.figure.get_size_inches())
    return RenderedFigure(
        spec.file, spec.title, spec.caption, plot.panels, width, height, file_sha256(path), plot.data
    )


def replace_folder(staging: Path, folder: Path) -> None:
    """Rename `staging` to `folder`; a folder already there is moved aside first and removed after."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    previous = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.previous"
    os.rename(folder, previous)
    os.rename(staging, folder)
    shutil.rmtree(previous, ignore_errors=True)


def render_report(data: ReportData, folder: Path) -> RenderedReport:
    """Write the report of `data` to `folder` (module docstring); returns what was written."""
    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        figures = [save_figure(spec, data, staging) for spec in FIGURES if spec.wanted(data)]
        (staging / INDEX).write_text(report_page(data, figures, DATA_FILE), encoding="utf-8")
        document = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "index_sha256": file_sha256(staging / INDEX),
            "figures": [asdict(figure) for figure in figures],
            "data": data.model_dump(mode="json"),
        }
        (staging / DATA_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RenderedReport(folder, figures)
