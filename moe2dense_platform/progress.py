"""Step progress of long stages: bars for an interactive front end, throttled plain log lines otherwise.

A long stage (teacher training, calibration, distillation) creates one `StageProgress` per run and
calls `update(step, total)` after each unit of work (`step` units of `total` done). Two outputs:
1. every update is published on the stdlib logger `moe2dense.progress` (record attributes `stage`,
   `step`, `total`; it does not propagate): a front end such as the CLI's rich bars listens with a
   handler, so tasks stay free of any UI; with nobody listening, these records vanish;
2. when stdout is not a terminal (CI logs, a pipe, a flow run on a Prefect worker) a plain line
       calibrate: step 12/128 (9.4%), 5,321 tokens/s, elapsed 0:00:31, ETA 0:04:59
   goes to the Prefect run logger of the running task (so the worker's console and the Prefect API
   show it), or to the stdlib logger `moe2dense.progress_lines` outside a run. At most one line every
   N seconds per stage: the first update logs, then the first update at least N s after the previous
   line. N = `MOE2DENSE_PROGRESS_INTERVAL_S` (default 15; 0 logs every update).
Rates are averages since the `StageProgress` was created: r = step / elapsed steps per second,
tokens/s = r · tokens_per_step (when the stage knows it), ETA = (total − step) / r.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from moe2dense_core.logging import MetricLogger

PROGRESS_LOGGER = logging.getLogger("moe2dense.progress")
PROGRESS_LOGGER.propagate = False
PROGRESS_LOGGER.setLevel(logging.INFO)
LINES_LOGGER = logging.getLogger("moe2dense.progress_lines")
LINES_LOGGER.setLevel(logging.INFO)
INTERVAL_ENV = "MOE2DENSE_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 15.0


def progress_interval_s() -> float:
    """N of the module docstring from `MOE2DENSE_PROGRESS_INTERVAL_S`; a bad value names the variable."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds ≥ 0")
    return value


def run_logger(outside: logging.Logger = LINES_LOGGER) -> logging.Logger | logging.LoggerAdapter:
    """The running Prefect task's (or flow's) run logger; `outside` (default `moe2dense.progress_lines`)
    outside a run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return outside


class StageProgress:
    """Progress of one run of one stage (module docstring).

    plain_lines: None = only when stdout is not a terminal; interval_s: None = `progress_interval_s()`.
    """

    def __init__(
        self,
        stage: str,
        *,
        tokens_per_step: int | None = None,
        plain_lines: bool | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.stage = stage
        self.tokens_per_step = tokens_per_step
        self.plain_lines = (not sys.stdout.isatty()) if plain_lines is None else plain_lines
        self.interval_s = progress_interval_s() if interval_s is None else interval_s
        self.started = time.monotonic()
        self.last_line: float | None = None

    def update(self, step: int, total: int) -> None:
        """`step` of `total` units done: publish it, and log a plain line if one is due."""
        PROGRESS_LOGGER.info(
            "%s %d/%d", self.stage, step, total, extra={"stage": self.stage, "step": step, "total": total}
        )
        now = time.monotonic()
        if not self.plain_lines or (self.last_line is not None and now - self.last_line < self.interval_s):
            return
        self.last_line = now
        run_logger().info(self.line(step, total, now - self.started))

    def line(self, step: int, total: int, elapsed: float) -> str:
        """The plain progress line for `step` of `total` after `elapsed` seconds."""
        parts = [f"{self.stage}: step {step}/{total} ({100.0 * step / max(total, 1):.1f}%)"]
        rate = step / elapsed if elapsed > 0 else 0.0
        if self.tokens_per_step is not None:
            parts.append(f"{rate * self.tokens_per_step:,.0f} tokens/s")
        parts.append(f"elapsed {timedelta(seconds=round(elapsed))}")
        eta = f"{timedelta(seconds=round((total - step) / rate))}" if rate > 0 else "unknown"
        parts.append(f"ETA {eta}")
        return ", ".join(parts)


class ProgressMetricLogger:
    """A MetricLogger that forwards everything to `inner` and reports every logged step as progress of
    `stage` (steps out of `total_steps`, `tokens_per_step` tokens each)."""

    def __init__(
        self, inner: MetricLogger, stage: str, total_steps: int, *, tokens_per_step: int | None = None
    ) -> None:
        self.inner, self.total_steps = inner, total_steps
        self.progress = StageProgress(stage, tokens_per_step=tokens_per_step)

    def log_params(self, params: dict[str, Any]) -> None:
        self.inner.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics(metrics, step=step)
        if step is not None:
            self.progress.update(step, self.total_steps)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)
