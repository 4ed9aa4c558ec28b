"""Stage declaration: each stage module says once what it is, and `stage(...)` makes its Prefect task.

    @stage("plan", result=PlanResult, key=plan_parts, lineage={TAG_PLAN_DIGEST: "plan_digest"})
    def plan_task(source: SourceResult, ..., parent_run_id: str) -> PlanResult: ...

A declaration gives the task, in one place:
- its cache key: `StageKey(name, key)` (moe2dense_platform/caching.py: stage name, code digest, store identity and
  the parts `key(parameters)` picks; None = never cached), results persisted in the artifact store;
- retries with backoff on transient failures (connection, 5xx, throttling: moe2dense_platform/transient.py), every
  stage touches the network (MLflow, the store, the hub): `STAGE_RETRIES` retries after
  `backoff_s · 2^(i-1)` seconds (i = 1, 2, …), a permanent error fails at once;
- its lineage tags: MLflow tag name → result field, set on the stage run by `publish.finish`;
- its Prefect tags (`moe2dense`, `stage:<name>`) and a structured `moe2dense.stages` record for every
  finished run of it (Completed, Cached or Failed: tasks/stage_events.py), what front ends such as the
  CLI's progress listen to.

`STAGES` maps every declared stage name to its `Stage`; importing a stage module declares it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import Task, task
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from moe2dense_platform.caching import StageKey
from moe2dense_platform.result_storage import RESULT_STORAGE
from moe2dense_platform.runtime import transient_failure
from tasks.stage_events import STATE_HOOKS

STAGE_RETRIES = 3
BACKOFF_S = 2.0
STAGES: dict[str, Stage] = {}


@dataclass(frozen=True)
class Stage:
    """One stage: its name, result type, cache key and the lineage tags read off its result."""

    name: str
    result: type[BaseModel]
    key: StageKey
    lineage: Mapping[str, str] = field(default_factory=dict)

    def lineage_tags(self, result: BaseModel) -> dict[str, str]:
        """{tag: str(result.<field>)} of the declared lineage tags whose field is set."""
        values = {tag: getattr(result, name) for tag, name in self.lineage.items()}
        return {tag: str(value) for tag, value in values.items() if value is not None}


def stage(
    name: str,
    *,
    result: type[BaseModel],
    key: Callable[[dict[str, Any]], list[Any] | None],
    lineage: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Declare stage `name` (module docstring) and turn the decorated function into its Prefect task."""
    if name in STAGES:
        raise ValueError(f"stage {name!r} is declared twice ({STAGES[name].result.__module__})")
    declared = Stage(name=name, result=result, key=StageKey(name, key), lineage=dict(lineage or {}))

    def make_task(function: Callable[..., Any]) -> Task:
        STAGES[name] = declared
        return task(
            function,
            name=name,
            cache_key_fn=declared.key,
            persist_result=True,
            result_storage=RESULT_STORAGE,
            retries=STAGE_RETRIES,
            retry_delay_seconds=exponential_backoff(BACKOFF_S),
            retry_condition_fn=transient_failure,
            tags={"moe2dense", f"stage:{name}"},
            **STATE_HOOKS,
        )

    return make_task
