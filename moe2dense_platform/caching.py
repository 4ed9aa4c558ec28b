"""Cache keys of the stage tasks (DESIGN.md "Stages and artifacts"), as Prefect `cache_key_fn`s.

A key is `moe2dense-<stage>-<sha256 of the canonical JSON of>`

    [stage, code digest, artifact store identity, what the stage's output depends on]

and what the output depends on enters by content digest, never by path or run id. Each stage declares its own parts next to its task
(tasks/stage.py, `key=`; the stage module's docstring says what they are): source (hub commit sha, or a local folder's file sizes and times),
calibrate, plan, assemble, distill, evaluate, report, register. `tasks.stage.STAGES[name].key` is a
stage's `StageKey`.

- code digest (`code_digest`, once per process): sha256 over every `.py` file of `moe2dense_core/`,
  `moe2dense_platform/` and `tasks/` (relative path + bytes, sorted) and the installed versions of moe2dense, torch,
  transformers and safetensors. Any library fix (a scorer, a grouper, assembly) re-runs every stage.
- store identity (`store_identity`): `file://<absolute root>` for a local artifact root,
  `s3://bucket/prefix @ endpoint` for S3. Results also live in that store (moe2dense_platform/result_storage.py),
  so switching stores never serves a result whose URIs point at the other one.
- corpus digest: `moe2dense_platform.corpus.corpus_digest`, the sha256 of the documents a CorpusSpec yields.
- snapshot / stats / plan / checkpoint digests: the sha256s the upstream stages return.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import moe2dense_core
from moe2dense_platform.settings import Settings

PLATFORM_FOLDER = Path(__file__).resolve().parent
# the stage package sits beside this one (both installed from one distribution); located, not imported
TASKS_FOLDER = PLATFORM_FOLDER.parent / "tasks"
LIBRARY_FOLDERS = (Path(moe2dense_core.__file__).resolve().parent, PLATFORM_FOLDER, TASKS_FOLDER)
KEYED_DISTRIBUTIONS = ("moe2dense", "torch", "transformers", "safetensors")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


def canonical(value: Any) -> Any:
    """JSON-ready form: pydantic models dumped in JSON mode, containers recursed, the rest as is."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def library_digest(folders: Sequence[Path], versions: dict[str, str | None]) -> str:
    """sha256 over (folder name / relative path, sha256 of the bytes) of every `.py` file, sorted, then
    the distribution versions."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            digest.update(f"{folder.name}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps(versions, sort_keys=True).encode())
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """The library code every stage runs (module docstring); computed once per process (milliseconds)."""
    return library_digest(LIBRARY_FOLDERS, {name: _version(name) for name in KEYED_DISTRIBUTIONS})


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def store_identity(settings: Settings) -> str:
    """Which artifact store results and artifacts go to: local root as an absolute URI, or S3 root + endpoint."""
    root = settings.resolved_artifact_root
    if settings.uses_s3:
        return f"{root} @ {settings.s3_endpoint_url or 'aws'}"
    return Path(root).expanduser().resolve().as_uri()


def key_payload(stage: str, parts: list[Any]) -> str:
    """The canonical JSON a stage key hashes (settings read from the environment, as the tasks do)."""
    return json.dumps(
        [stage, code_digest(), store_identity(Settings()), canonical(parts)],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )


class StageKey:
    """A Prefect cache_key_fn: `parts(parameters)` picks what the output depends on (None: do not cache)."""

    def __init__(self, stage: str, parts: Callable[[dict[str, Any]], list[Any] | None]) -> None:
        self.stage = stage
        self.parts = parts
        self.__name__ = f"{stage}_cache_key"

    def payload(self, parameters: dict[str, Any]) -> str | None:
        chosen = self.parts(parameters)
        return None if chosen is None else key_payload(self.stage, chosen)

    def __call__(self, context: Any, parameters: dict[str, Any]) -> str | None:
        payload = self.payload(parameters)
        if payload is None:
            return None
        return f"moe2dense-{self.stage}-{hashlib.sha256(payload.encode()).hexdigest()}"


def without(section: BaseModel, *fields: str) -> dict[str, Any]:
    """A config section's JSON minus the fields that enter the key another way (data, output folders)."""
    return section.model_dump(mode="json", exclude=set(fields))
