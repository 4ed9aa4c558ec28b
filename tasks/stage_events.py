"""Finished-stage records: the structured events front ends (the CLI's progress) listen to.

`announce` is a Prefect state hook (`on_completion` / `on_failure`; Prefect runs it for cached results
too). For every finished task run that carries it, it emits one record on the stdlib logger
`moe2dense.stages` (it does not propagate) with attributes `stage` (the task name), `task_run_name` and
`state` (Completed, Cached, Failed, …). Every declared stage carries it (tasks/stage.py); so do the
teacher flow's tasks. No log text is parsed anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

STAGE_LOGGER = logging.getLogger("moe2dense.stages")
STAGE_LOGGER.propagate = False
STAGE_LOGGER.setLevel(logging.INFO)


def announce(task: Any, task_run: Any, state: Any) -> None:
    """Prefect state hook: the `moe2dense.stages` record of a finished task run."""
    STAGE_LOGGER.info(
        "%s %s",
        task_run.name,
        state.name,
        extra={"stage": task.name, "task_run_name": task_run.name, "state": state.name},
    )


STATE_HOOKS: dict[str, Any] = {"on_completion": [announce], "on_failure": [announce]}
"""`@task(..., **STATE_HOOKS)`: announce every finished run of the task."""
