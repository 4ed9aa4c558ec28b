"""Stage `source`: resolve the teacher (local folder or hub id at a revision) and digest every file.

Output (no copy: the snapshot stays where it is): the local folder, `config.model_type`, E and k,
sha256 of every weight/config file and the snapshot digest = sha256 of their canonical JSON. The
checkpoint is validated from headers (model_type supported, config vs tensors) before anything
downstream spends time on it. Cached on (hub id, revision) for hub models, and for local folders on
the path plus every file's size and modification time (tasks/caching.py), so an edited folder is
hashed again while an untouched one is not.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from moe2dense_core.arch.spec import get_spec
from moe2dense_core.io.digests import file_sha256, snapshot_sha256
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.resolve import resolve_model
from moe2dense_core.io.validate import validate_checkpoint
from tasks.caching import source_key
from tasks.recipe import SourceConfig
from tasks.runtime import transient_failure

DIGESTED_SUFFIXES = (".safetensors", ".json")


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
    """Resolve, validate and digest the teacher named by the recipe's `source` section."""
    path = resolve_model(source.model, revision=None if source.is_local else source.revision)
    reader = CheckpointReader(path)
    try:
        dims = validate_checkpoint(reader, get_spec(reader.model_type))
        model_type = reader.model_type
    finally:
        reader.close()
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.name.endswith(DIGESTED_SUFFIXES))
    digests = {p.name: file_sha256(p) for p in files}
    return SourceResult(
        model=source.model,
        revision=source.revision,
        local_path=str(Path(path).resolve()),
        model_type=model_type,
        num_experts=dims.num_experts,
        top_k=dims.top_k,
        file_digests=digests,
        snapshot_digest=snapshot_sha256(digests),
    )


@task(
    name="source",
    cache_key_fn=source_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_failure,
)
def source_task(source: SourceConfig) -> SourceResult:
    return resolve_source(source)
