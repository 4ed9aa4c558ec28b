"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state, so safe
in a task's thread). Each builder returns a Plot: the figure and the arrays it draws (report.json keeps
them, so a reader can check a picture against its numbers).

- kept_experts_plot: one panel per plan, layers × experts [L, E]; cell 0 = expert dropped, g + 1 = expert
  kept in group g (group g is dense block g of the student layer);
- scores_plot: one panel per plan, layers × experts [L, E]; colour = the scorer's score s min–max
  normalised within each layer l, (s - min_l s) / (max_l s - min_l s) (0.5 where a layer's scores are
  all equal); dots mark the kept experts;
- perplexity_grid_plot: one panel per (grouping, scaling) of a sweep; rows scorers, columns K, cell =
  pre-distillation held-out perplexity (log colour scale shared by the panels; blank where the grid has
  no such configuration, e.g. a non-merging grouper at K > k); the lowest is bold;
- curves_plot: one panel per metric of CURVE_METRICS present (loss, KL) against the optimizer step, one
  line per distillation run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from moe2dense_core.plan import ConversionPlan
from moe2dense_platform.reporting.data import CURVE_METRICS, Curve, LabelledPlan, SweepPoint

DROPPED_COLOUR = "#e6e6e6"
ANNOTATED_CELLS = 640
"""A map with at most this many cells per panel writes each kept expert's group id in its cell."""
COLORBAR_LABEL = "<colorbar>"
METRIC_AXIS_LABELS = {"loss": "distillation loss", "kl": "KL(teacher ‖ student) per token"}


@dataclass(frozen=True)
class Plot:
    figure: Figure
    data: dict[str, Any]

    @property
    def panels(self) -> int:
        """Axes that show data (colour bars not counted)."""
        return sum(1 for axis in self.figure.axes if axis.get_label() != COLORBAR_LABEL)


def new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def kept_expert_map(plan: ConversionPlan) -> np.ndarray:
    """[L, E] int64 over plan.layers in order: 0 where the expert is dropped, g + 1 where it is in group g."""
    matrix = np.zeros((len(plan.layers), plan.num_experts), dtype=np.int64)
    for row, layer in enumerate(plan.layers):
        for group, members in enumerate(layer.groups):
            matrix[row, members] = group + 1
    return matrix


def normalised_scores(plan: ConversionPlan) -> np.ndarray:
    """[L, E] float64: each layer's scores min–max normalised to [0, 1] (module docstring)."""
    scores = np.array([layer.scores for layer in plan.layers], dtype=np.float64)
    low = np.nanmin(scores, axis=1, keepdims=True)
    span = np.nanmax(scores, axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.5)


def _expert_axes(figure: Figure, count: int) -> list[Axes]:
    return [figure.add_subplot(count, 1, index + 1) for index in range(count)]


def _panel_size(plan: ConversionPlan) -> tuple[float, float]:
    """(width, height) in inches of one layers × experts panel."""
    return min(18.0, 2.5 + 0.3 * plan.num_experts), min(8.0, 1.2 + 0.3 * len(plan.layers))


def _label_layers_and_experts(axis: Axes, plan: ConversionPlan, title: str) -> None:
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("expert")
    axis.set_ylabel("layer")
    axis.set_yticks(range(len(plan.layers)), [str(layer.layer) for layer in plan.layers])
    if plan.num_experts <= 32:
        axis.set_xticks(range(plan.num_experts))


def kept_experts_plot(plans: Sequence[LabelledPlan]) -> Plot:
    width, height = _panel_size(plans[0].plan)
    figure = new_figure(width, height * len(plans))
    data = {}
    for axis, labelled in zip(_expert_axes(figure, len(plans)), plans, strict=True):
        matrix = kept_expert_map(labelled.plan)
        num_groups = max(int(matrix.max()), 1)
        groups = colormaps["tab10"].colors
        palette = ListedColormap([DROPPED_COLOUR, *[groups[g % len(groups)] for g in range(num_groups)]])
        norm = BoundaryNorm(np.arange(-0.5, num_groups + 1.5), palette.N)
        axis.imshow(matrix, cmap=palette, norm=norm, aspect="auto", interpolation="nearest")
        if matrix.size <= ANNOTATED_CELLS:
            for row, column in zip(*np.nonzero(matrix), strict=True):
                axis.text(column, row, str(matrix[row, column] - 1), ha="center", va="center", fontsize=7)
        _label_layers_and_experts(axis, labelled.plan, labelled.label)
        data[labelled.label] = matrix.tolist()
    return Plot(figure, data)


def scores_plot(plans: Sequence[LabelledPlan]) -> Plot:
    width, height = _panel_size(plans[0].plan)
    figure = new_figure(width + 1.0, height * len(plans))
    axes = _expert_axes(figure, len(plans))
    data, image = {}, None
    for axis, labelled in zip(axes, plans, strict=True):
        scores = normalised_scores(labelled.plan)
        image = axis.imshow(
            scores, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
        rows, columns = np.nonzero(kept_expert_map(labelled.plan))
        axis.scatter(columns, rows, s=12, c="white", edgecolors="black", linewidths=0.5)
        _label_layers_and_experts(axis, labelled.plan, f"{labelled.label} ({labelled.plan.config.scoring})")
        data[labelled.label] = scores.tolist()
    figure.colorbar(image, ax=axes, label="score, min–max within the layer")
    return Plot(figure, data)


def _k_key(k: int | None) -> int:
    return -1 if k is None else k


def perplexity_grid(points: Sequence[SweepPoint]) -> dict[str, dict[str, list]]:
    """{"grouping · scaling": {"scorers": [...], "K": [...], "perplexity": [[value or None per K] per
    scorer]}}; scorers by name, K ascending with K = k (None) first."""
    panels: dict[str, dict[tuple[str, int | None], float]] = {}
    for point in points:
        cells = panels.setdefault(f"{point.plan.grouping} · {point.plan.scaling}", {})
        cells[(str(point.plan.scoring), point.plan.num_selected)] = point.perplexity
    grid = {}
    for title, cells in panels.items():
        scorers = sorted({scorer for scorer, _ in cells})
        ks = sorted({k for _, k in cells}, key=_k_key)
        grid[title] = {
            "scorers": scorers,
            "K": ["k" if k is None else str(k) for k in ks],
            "perplexity": [[cells.get((scorer, k)) for k in ks] for scorer in scorers],
        }
    return grid


def perplexity_grid_plot(points: Sequence[SweepPoint]) -> Plot:
    grid = perplexity_grid(points)
    values = [p.perplexity for p in points if math.isfinite(p.perplexity)]
    low, high = (min(values), max(values)) if values else (1.0, 2.0)
    norm = LogNorm(vmin=low, vmax=max(high, low * 1.01))
    columns = min(3, len(grid))
    rows = math.ceil(len(grid) / columns)
    widest = max(len(panel["K"]) for panel in grid.values())
    tallest = max(len(panel["scorers"]) for panel in grid.values())
    figure = new_figure(columns * (2.8 + 0.9 * widest), rows * (1.2 + 0.45 * tallest))
    axes = [figure.add_subplot(rows, columns, index + 1) for index in range(len(grid))]
    image = None
    for axis, (title, panel) in zip(axes, grid.items(), strict=True):
        matrix = np.array([[np.nan if v is None else v for v in row] for row in panel["perplexity"]])
        image = axis.imshow(matrix, cmap="viridis_r", norm=norm, aspect="auto", interpolation="nearest")
        for (row, column), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                weight = "bold" if value == low else "normal"
                axis.text(
                    column,
                    row,
                    f"{value:.4g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    weight=weight,
                    color="white" if norm(value) > 0.5 else "black",
                )
        axis.set_title(title, fontsize=9)
        axis.set_xticks(range(len(panel["K"])), panel["K"])
        axis.set_yticks(range(len(panel["scorers"])), panel["scorers"])
        axis.set_xlabel("K (kept experts)")
        axis.set_ylabel("scorer")
    colorbar = figure.colorbar(image, ax=axes, label="perplexity before distillation")
    colorbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    colorbar.ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    return Plot(figure, grid)


def curves_plot(curves: Sequence[Curve]) -> Plot:
    metrics = [metric for metric in CURVE_METRICS if any(curve.metric == metric for curve in curves)]
    figure = new_figure(5.5 * len(metrics), 3.6)
    data: dict[str, dict[str, list[list[float]]]] = {}
    for index, metric in enumerate(metrics):
        axis = figure.add_subplot(1, len(metrics), index + 1)
        for curve in (c for c in curves if c.metric == metric):
            axis.plot(curve.steps, curve.values, marker="o", markersize=3, label=curve.label)
            data.setdefault(metric, {})[curve.label] = [curve.steps, curve.values]
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(METRIC_AXIS_LABELS.get(metric, metric))
        axis.legend(fontsize=7)
    return Plot(figure, data)
