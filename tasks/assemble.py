"""Stage `assemble`: plan + teacher snapshot → a standard dense Hugging Face checkpoint (METHOD.md step 5).

`moe2dense_core.assemble` streams the teacher one layer at a time and writes safetensors shards,
config, tokenizer, model card and provenance into a scratch folder; the folder is published once to the
artifact store (kind `dense-model`; the MLflow run records its URI and content address, never a copy).
checkpoint_digest = sha256 of the canonical JSON of the shard digests. Cached on plan digest + snapshot
digest + checkpoint dtype and shard size (not the export folder).
"""

from __future__ import annotations

from moe2dense_core.assembly.checkpoint import assemble
from moe2dense_core.io.digests import snapshot_sha256
from moe2dense_core.plan import ConversionPlan
from moe2dense_platform.caching import without
from moe2dense_platform.recipe import StorageConfig
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_CHECKPOINT_DIGEST, TAG_PLAN_DIGEST
from tasks.publish import finish, publish_dir, record_inputs
from tasks.results import CheckpointResult, PlanResult, SourceResult
from tasks.source import open_source
from tasks.stage import stage

MIB = 1024 * 1024


@stage(
    "assemble",
    result=CheckpointResult,
    key=lambda p: [p["plan"].plan_digest, p["source"].snapshot_digest, without(p["storage"], "export_dir")],
    lineage={TAG_PLAN_DIGEST: "plan_digest", TAG_CHECKPOINT_DIGEST: "checkpoint_digest"},
)
def assemble_task(
    source: SourceResult, plan: PlanResult, storage: StorageConfig, parent_run_id: str
) -> CheckpointResult:
    runtime = Runtime.from_environment()
    conversion = ConversionPlan.from_json(runtime.fetch_uri(plan.plan_uri).read_text())
    with (
        runtime.stage(parent_run_id, "assemble", {"storage": storage}) as run,
        runtime.scratch("assemble") as scratch,
    ):
        record_inputs(run, runtime, plan=plan.plan_uri)
        with open_source(source) as teacher:  # recorded digests checked; validated once per process
            result = assemble(
                teacher,
                conversion,
                scratch / "dense_model",
                dtype=storage.checkpoint_dtype,
                max_shard_bytes=storage.max_shard_size_mb * MIB,
            )
        uri = publish_dir(runtime, run, result.out_dir, kind="dense-model", name="dense_model")
        run.log_metrics({"assemble/num_parameters": float(result.num_parameters)})
        checkpoint = CheckpointResult(
            checkpoint_uri=uri,
            checkpoint_digest=snapshot_sha256(result.shard_digests),
            shard_digests=result.shard_digests,
            num_parameters=result.num_parameters,
            plan_digest=plan.plan_digest,
            mlflow_run_id=run.run_id,
            stage="assemble",
        )
        finish(run, "assemble", checkpoint)
        return checkpoint
