"""Cache keys of the stage tasks (DESIGN.md "Stages and artifacts"), as Prefect `cache_key_fn`s.

A key is sha256 over the canonical JSON of [stage, sha256(task source code), what the stage's output
depends on] — content digests, never paths or run ids:

| stage     | key parts                                                          |
|-----------|--------------------------------------------------------------------|
| source    | hub id + revision; local folder: path + every file's (name, size, mtime)  |
| calibrate | snapshot digest, calibration data spec + sizes, statistics config   |
| plan      | stats digest, PlanConfig                                             |
| assemble  | plan digest, snapshot digest, storage dtype / shard size            |
| distill   | student digest, snapshot digest (online teacher), data spec, DistillConfig |
| evaluate  | checkpoint digest, evaluation config                                |
| report    | digests of every result it summarises                               |

The task source is part of every key so a changed task never serves an old result. Results are
persisted by Prefect (PREFECT_LOCAL_STORAGE_PATH in the embedded default); the artifacts they point at
live in the artifact store.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

CACHE_KEY_VERSION = 1


def canonical(value: Any) -> Any:
    """JSON-ready form: pydantic models dumped in JSON mode, containers recursed, the rest as is."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def stage_key(stage: str, source_code: str, parts: list[Any]) -> str:
    payload = json.dumps(
        [CACHE_KEY_VERSION, stage, hashlib.sha256(source_code.encode()).hexdigest(), canonical(parts)],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return f"moe2dense-{stage}-{hashlib.sha256(payload.encode()).hexdigest()}"


def cache_key(stage: str, parts: Callable[[dict[str, Any]], list[Any] | None]) -> Callable[..., str | None]:
    """A Prefect cache_key_fn: `parts(parameters)` picks what the output depends on (None: do not cache)."""

    def key_fn(context: Any, parameters: dict[str, Any]) -> str | None:
        chosen = parts(parameters)
        if chosen is None:
            return None
        return stage_key(stage, inspect.getsource(context.task.fn), chosen)

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def _source_parts(p: dict[str, Any]) -> list[Any]:
    """Hub: id + revision. Local folder [defined here]: its absolute path + (name, size, mtime_ns) of
    every file, so an unchanged folder is not re-hashed and any edit re-runs the stage."""
    source = p["source"]
    if not source.is_local:
        return [source.model, source.revision]
    folder = Path(source.model).expanduser().resolve()
    files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    return [str(folder), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


source_key = cache_key("source", _source_parts)
calibrate_key = cache_key(
    "calibrate", lambda p: [p["source"].snapshot_digest, p["calibration"], p["statistics"]]
)
plan_key = cache_key("plan", lambda p: [p["calibration"].stats_digest, p["plan"]])
assemble_key = cache_key(
    "assemble", lambda p: [p["plan"].plan_digest, p["source"].snapshot_digest, p["storage"]]
)
distill_key = cache_key(
    "distill", lambda p: [p["student"].checkpoint_digest, p["source"].snapshot_digest, p["distillation"]]
)
evaluate_key = cache_key("evaluate", lambda p: [p["checkpoint"].checkpoint_digest, p["evaluation"]])
report_key = cache_key("report", lambda p: [p["recipe_digest"], p["results"]])
