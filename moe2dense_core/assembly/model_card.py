"""The model card (README.md) of an assembled dense checkpoint, rendered from its provenance record."""

from __future__ import annotations

from moe2dense_core.assembly.provenance import PROVENANCE_FILE, AssemblyProvenance


def render_model_card(record: AssemblyProvenance) -> str:
    """Markdown model card: source model, revision, teacher shard digests, plan digest and summary, citation."""
    plan = record.plan
    config = plan.config
    kept_per_layer = "\n".join(
        f"| {lp.layer} | {lp.kept} | {lp.groups} | {[round(c, 6) for c in lp.scales]} |"
        + (f" {lp.shared_scale:.6g} |" if lp.shared_scale is not None else " – |")
        for lp in plan.layers
    )
    # `base_model` is hub metadata: only meaningful for a hub id, not for a local folder.
    base_model = (
        "" if record.source_model.startswith(("/", ".", "~")) else f"base_model: {record.source_model}\n"
    )
    shard_rows = "\n".join(
        f"| `{name}` | `{digest}` |" for name, digest in sorted(record.source_shard_digests.items())
    )
    return f"""---
library_name: transformers
{base_model}tags:
- moe2dense
- moe-to-dense
---

# Dense conversion of `{record.source_model}`

This checkpoint is a **dense** `{record.dense_model_type}` model ({", ".join(record.dense_architectures)})
converted from the Mixture-of-Experts model `{record.source_model}` (`{record.source_model_type}`) by
moe2dense{f" {record.tool_version}" if record.tool_version else ""}. Every MoE block was replaced by one dense FFN of
width {record.ffn_width}: the kept experts' (merged) blocks concatenated along the intermediate dimension,
their down projections scaled by constants standing in for the routing weights, shared experts
appended; the router was removed. It loads with stock `transformers`
(`AutoModelForCausalLM.from_pretrained`), no custom code. It has not been distilled yet: expect it to
need knowledge distillation from its teacher before it is useful.

## Source

- model: `{record.source_model}`
- revision: {f"`{record.source_revision}`" if record.source_revision else "unknown (local folder)"}
- snapshot digest (sha256 over every config, index, shard and tokenizer file): `{record.source_snapshot_digest}`

| teacher shard | sha256 |
|---|---|
{shard_rows}

## Conversion plan

- plan digest (sha256): `{record.plan_digest}`
- scoring `{config.scoring}`, kept experts per layer K = {len(plan.layers[0].kept) if plan.layers else 0}
  of E = {plan.num_experts}, grouping `{config.grouping}` into k = {len(plan.layers[0].groups) if plan.layers else 0}
  groups, scaling `{config.scaling}`
- dtype `{record.dtype}`; the full plan and every digest are in `{PROVENANCE_FILE}`

| layer | kept experts | groups | down-projection scales c_g | shared scale |
|---|---|---|---|---|
{kept_per_layer}

## Method

{record.method}
"""
