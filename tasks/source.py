"""Stage `source`: resolve the teacher (local folder or hub id at a revision) and digest every file.

Revisions: a hub revision is recorded as the commit it resolved to (`main` or a tag moves; the commit is
the name of the snapshot folder that was read) in the result, the stage run's `source.revision` param and
`moe2dense.source_revision` tag, and through the result in the registered model's tags and the report.
A local folder has no commit: the recipe's `revision` is recorded as given (normally none), and the
snapshot digest identifies the files.

Output (no copy: the snapshot stays where it is): the local folder, `config.model_type`, E and k,
sha256 of every file the stages read (weights, config, tokenizer: the patterns `resolve_model`
fetches) and the snapshot digest = sha256 of their canonical JSON, which every later cache key uses.
The checkpoint is validated from headers (model_type supported, every tensor vs config, tokenizer vs
vocabulary: `open_teacher`) before anything downstream spends time on it; later stages re-open it with
`open_source`, which checks the recorded digests and validates only when this process has not. Cached on (hub id, commit sha) for hub models (a branch or tag name is
resolved and hashed on every run), and for local folders on the path plus every file's size and
modification time (key parts below), so an edited folder is hashed again while an untouched one is not.
In a flow it opens its stage run (`source`, snapshot digest and source tags) under the parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe2dense_core.checkpoint.teacher import Teacher, open_teacher
from moe2dense_platform.caching import COMMIT_SHA
from moe2dense_platform.recipe import SourceConfig
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_SNAPSHOT_DIGEST, TAG_SOURCE_MODEL, TAG_SOURCE_REVISION
from tasks.publish import finish
from tasks.results import SourceResult
from tasks.stage import stage


def source_parts(p: dict[str, Any]) -> list[Any] | None:
    """Hub: id + commit sha (a branch or tag name is not cached: it moves). Local folder: its absolute path
    (the result names it) + every file's (name, size, mtime_ns): an untouched folder is not re-hashed, any
    edit (which moves mtime) re-runs the stage. Later keys use this stage's OUTPUT, the file sha256s."""
    source = p["source"]
    if not source.is_local:
        return [source.model, source.revision] if COMMIT_SHA.match(source.revision or "") else None
    folder = Path(source.model).expanduser().resolve()
    files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    return [str(folder), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def resolve_source(source: SourceConfig) -> SourceResult:
    """Resolve, validate and digest the teacher named by the recipe's `source` section (open_teacher: the
    one validation of the run; the tokenizer is required, calibration tokenizes text with it); a hub
    revision as the commit it resolved to (module docstring)."""
    revision = None if source.is_local else source.revision
    with open_teacher(source.model, revision=revision, require_tokenizer=True) as teacher:
        digests = teacher.file_digests()
        return SourceResult(
            model=source.model,
            revision=source.revision if source.is_local else teacher.revision,
            local_path=str(teacher.path.resolve()),
            model_type=teacher.model_type,
            num_experts=teacher.dims.num_experts,
            top_k=teacher.dims.top_k,
            file_digests=digests,
            snapshot_digest=teacher.snapshot_digest(),
        )


def open_source(source: SourceResult) -> Teacher:
    """Re-open the snapshot the source stage validated, in a later stage (a Prefect task boundary: an open
    Teacher is not a result Prefect can persist). open_teacher with the recorded digests skips validation
    when this process validated and hashed these very files (same digests, files untouched since); else
    — e.g. the source result came from the cache in a fresh process — it validates again and checks every
    file against its recorded sha256, so a changed or corrupted byte is refused before any work."""
    return open_teacher(source.local_path, expected_digests=source.file_digests)


@stage(
    "source",
    result=SourceResult,
    key=source_parts,
    lineage={
        TAG_SOURCE_MODEL: "model",
        TAG_SOURCE_REVISION: "revision",
        TAG_SNAPSHOT_DIGEST: "snapshot_digest",
    },
)
def source_task(source: SourceConfig, parent_run_id: str | None = None) -> SourceResult:
    """The resolved snapshot; with `parent_run_id` (in a flow) also its `source` stage run, whose
    `source.revision` param is logged once resolved (the commit, never a branch name)."""
    if parent_run_id is None:
        return resolve_source(source)
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "source", {"source": source.model_dump(exclude={"revision"})}) as run:
        result = resolve_source(source).model_copy(update={"mlflow_run_id": run.run_id})
        run.log_params({"source.revision": result.revision})
        finish(run, "source", result)
        return result
