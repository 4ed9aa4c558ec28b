"""Step progress (moe2dense_platform/progress.py): every step is published for the bars; without a terminal, plain
lines with step/total, tokens/s and ETA are logged, at most one every N seconds per stage."""

from __future__ import annotations

import logging
import re

import pytest

from moe2dense_core.logging import NullLogger
from moe2dense_platform.progress import (
    INTERVAL_ENV,
    LINES_LOGGER,
    PROGRESS_LOGGER,
    ProgressMetricLogger,
    StageProgress,
    progress_interval_s,
)

LINE = re.compile(
    r"^(?P<stage>[\w-]+): step (?P<step>\d+)/(?P<total>\d+) \(\d+\.\d%\), (?:[\d,]+ tokens/s, )?"
    r"elapsed \d+:\d\d:\d\d, ETA (?:\d+:\d\d:\d\d|unknown)$"
)


class Recorder(NullLogger):
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((metrics, step))


class Records(logging.Handler):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.records = logger, []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def test_each_logged_step_is_forwarded_and_published() -> None:
    inner = Recorder()
    with Records(PROGRESS_LOGGER) as steps:
        logger = ProgressMetricLogger(inner, "distill", total_steps=30)
        logger.log_metrics({"loss": 2.5}, step=10)
        logger.log_metrics({"final": 1.0})  # no step: forwarded, not progress
    assert inner.metrics == [({"loss": 2.5}, 10), ({"final": 1.0}, None)]
    assert [(r.stage, r.step, r.total) for r in steps.records] == [("distill", 10, 30)]


def test_step_records_do_not_reach_the_root_logger() -> None:
    with Records(logging.getLogger()) as root:
        StageProgress("distill", plain_lines=True, interval_s=0).update(1, 5)
    assert [r for r in root.records if hasattr(r, "stage")] == []
    assert [r.getMessage().split(",")[0] for r in root.records] == ["distill: step 1/5 (20.0%)"]


def test_plain_lines_carry_stage_step_tokens_and_eta() -> None:
    progress = StageProgress("calibrate", tokens_per_step=2048, plain_lines=True, interval_s=0)
    with Records(LINES_LOGGER) as lines:
        for step in range(1, 4):
            progress.update(step, 10)
    messages = [r.getMessage() for r in lines.records]
    assert len(messages) == 3 and all(LINE.match(m) for m in messages), messages
    assert [LINE.match(m)["step"] for m in messages] == ["1", "2", "3"]
    assert "tokens/s" in messages[-1] and "ETA" in messages[-1]


def test_plain_lines_are_throttled_per_stage_and_absent_on_a_terminal() -> None:
    calibrate = StageProgress("calibrate", plain_lines=True, interval_s=3600)
    distill = StageProgress("distill", plain_lines=True, interval_s=3600)
    on_terminal = StageProgress("plan", plain_lines=False, interval_s=0)
    with Records(LINES_LOGGER) as lines, Records(PROGRESS_LOGGER) as steps:
        for step in range(1, 51):
            calibrate.update(step, 50)
            distill.update(step, 50)
            on_terminal.update(step, 50)
    assert [LINE.match(r.getMessage()).group("stage", "step") for r in lines.records] == [
        ("calibrate", "1"),
        ("distill", "1"),
    ]
    assert len(steps.records) == 150  # the bars still see every step


def test_the_interval_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval_s() == 15.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval_s() == 2.5 and StageProgress("x").interval_s == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ValueError, match=INTERVAL_ENV):
            progress_interval_s()
