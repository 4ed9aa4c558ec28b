"""Stage `source`: resolve the teacher (local folder or hub id at a revision) and digest every file.

Output (no copy: the snapshot stays where it is): the local folder, `config.model_type`, E and k,
sha256 of every file the stages read (weights, config, tokenizer: the patterns `resolve_model`
fetches) and the snapshot digest = sha256 of their canonical JSON, which every later cache key uses.
The checkpoint is validated from headers (model_type supported, every tensor vs config, tokenizer vs
vocabulary: `open_teacher`) before anything downstream spends time on it; later stages re-open it with
`open_source`, which checks the recorded digests and validates only when this process has not. Cached on (hub id, commit sha) for hub models (a branch or tag name is
resolved and hashed on every run), and for local folders on the path plus every file's size and
modification time (tasks/caching.py), so an edited folder is hashed again while an untouched one is not.
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ConfigDict

from moe2dense_core.checkpoint.teacher import Teacher, open_teacher
from tasks.caching import source_key
from tasks.recipe import SourceConfig
from tasks.result_storage import RESULT_STORAGE
from tasks.runtime import transient_failure


class SourceResult(BaseModel):
    """The resolved teacher snapshot."""

    model_config = ConfigDict(frozen=True)

    model: str
    revision: str | None
    local_path: str
    model_type: str
    num_experts: int
    top_k: int
    file_digests: dict[str, str]
    snapshot_digest: str


def resolve_source(source: SourceConfig) -> SourceResult:
    """Resolve, validate and digest the teacher named by the recipe's `source` section (open_teacher: the
    one validation of the run; the tokenizer is required, calibration tokenizes text with it)."""
    revision = None if source.is_local else source.revision
    with open_teacher(source.model, revision=revision, require_tokenizer=True) as teacher:
        digests = teacher.file_digests()
        return SourceResult(
            model=source.model,
            revision=source.revision,
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


@task(
    name="source",
    cache_key_fn=source_key,
    persist_result=True,
    result_storage=RESULT_STORAGE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
)
def source_task(source: SourceConfig) -> SourceResult:
    return resolve_source(source)
