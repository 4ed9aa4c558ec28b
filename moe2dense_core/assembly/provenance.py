"""Provenance of an assembled dense checkpoint: `moe2dense.json` beside its weights.

Everything needed to answer "where did this model come from": the teacher (id or path, revision,
sha256 of every shard, snapshot digest), the full ConversionPlan and its digest, the output shards'
sha256, the dtype, the tool version and the method citation. The model card (model_card.py) is
rendered from the same record.
"""

from __future__ import annotations

import importlib.metadata

from pydantic import BaseModel, ConfigDict

from moe2dense_core.plan import ConversionPlan

PROVENANCE_FILE = "moe2dense.json"
PROVENANCE_SCHEMA_VERSION = 1
METHOD_CITATION = (
    "Kim et al., 2026. Pruning and Distilling Mixture-of-Experts into Dense Language Models. arXiv:2605.28207"
)


class AssemblyProvenance(BaseModel):
    """The record written as moe2dense.json (see module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = PROVENANCE_SCHEMA_VERSION
    tool: str = "moe2dense"
    tool_version: str | None
    method: str = METHOD_CITATION
    source_model: str
    source_revision: str | None
    source_model_type: str
    source_snapshot_digest: str
    source_shard_digests: dict[str, str]
    dense_model_type: str
    dense_architectures: list[str]
    ffn_width: int
    dtype: str
    plan_digest: str
    plan: ConversionPlan
    shard_digests: dict[str, str]


def installed_tool_version() -> str | None:
    """Version of the installed `moe2dense` distribution; None when run from an uninstalled source tree."""
    try:
        return importlib.metadata.version("moe2dense")
    except importlib.metadata.PackageNotFoundError:
        return None
