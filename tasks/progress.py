"""Step progress of long stages, published on the stdlib logger `moe2dense.progress`.

Tasks report `(stage, step, total)`; a front end (the CLI's rich bars) listens with a logging handler,
so tasks stay free of any UI. The logger does not propagate: with nobody listening, reports vanish.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from moe2dense_core.logging import MetricLogger

PROGRESS_LOGGER = logging.getLogger("moe2dense.progress")
PROGRESS_LOGGER.propagate = False
PROGRESS_LOGGER.setLevel(logging.INFO)


def report_progress(stage: str, step: int, total: int) -> None:
    """Publish that `stage` reached `step` of `total` (record attributes: stage, step, total)."""
    PROGRESS_LOGGER.info("%s %d/%d", stage, step, total, extra={"stage": stage, "step": step, "total": total})


class ProgressMetricLogger:
    """A MetricLogger that forwards everything to `inner` and reports every logged step as progress."""

    def __init__(self, inner: MetricLogger, stage: str, total_steps: int) -> None:
        self.inner, self.stage, self.total_steps = inner, stage, total_steps

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics(metrics, step=step)
        if step is not None:
            report_progress(self.stage, step, self.total_steps)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)
