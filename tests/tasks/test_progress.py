"""Step progress: a wrapped MetricLogger forwards everything and publishes each logged step."""

from __future__ import annotations

import logging

from moe2dense_core.logging import NullLogger
from tasks.progress import PROGRESS_LOGGER, ProgressMetricLogger


class Recorder(NullLogger):
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((metrics, step))


class Steps(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.stage, record.step, record.total))


def test_each_logged_step_is_forwarded_and_published() -> None:
    inner, steps = Recorder(), Steps()
    PROGRESS_LOGGER.addHandler(steps)
    try:
        logger = ProgressMetricLogger(inner, "distill", total_steps=30)
        logger.log_metrics({"loss": 2.5}, step=10)
        logger.log_metrics({"final": 1.0})  # no step: forwarded, not progress
    finally:
        PROGRESS_LOGGER.removeHandler(steps)
    assert inner.metrics == [({"loss": 2.5}, 10), ({"final": 1.0}, None)]
    assert steps.seen == [("distill", 10, 30)]


def test_progress_does_not_reach_the_root_logger() -> None:
    root, spy = logging.getLogger(), Steps()
    root.addHandler(spy)
    try:
        ProgressMetricLogger(NullLogger(), "distill", 5).log_metrics({"loss": 1.0}, step=1)
    finally:
        root.removeHandler(spy)
    assert spy.seen == []
