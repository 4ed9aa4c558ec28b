"""Stage `assemble`: plan + teacher snapshot → a standard dense Hugging Face checkpoint (METHOD.md step 5).

`moe2dense_core.assemble` streams the teacher one layer at a time and writes safetensors shards,
config, tokenizer, model card and provenance into a scratch folder; the folder goes to the artifact
store (kind `dense-model`) and to the stage's MLflow run (`dense_model/`). checkpoint_digest = sha256
of the canonical JSON of the shard digests. Cached on plan digest + snapshot digest + dtype and shard size.
"""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, ConfigDict

from moe2dense_core.assembly.checkpoint import assemble
from moe2dense_core.io.digests import snapshot_sha256
from moe2dense_core.plan import ConversionPlan
from tasks.caching import assemble_key
from tasks.plan import PlanResult
from tasks.recipe import StorageConfig
from tasks.result_storage import RESULT_STORAGE
from tasks.runtime import Runtime
from tasks.source import SourceResult, open_source

MIB = 1024 * 1024


class CheckpointResult(BaseModel):
    """A dense checkpoint in the artifact store (assembled or distilled)."""

    model_config = ConfigDict(frozen=True)

    checkpoint_uri: str
    checkpoint_digest: str
    shard_digests: dict[str, str]
    num_parameters: int
    plan_digest: str
    mlflow_run_id: str
    stage: str


@task(name="assemble", cache_key_fn=assemble_key, persist_result=True, result_storage=RESULT_STORAGE)
def assemble_task(
    source: SourceResult, plan: PlanResult, storage: StorageConfig, parent_run_id: str
) -> CheckpointResult:
    runtime = Runtime.from_environment()
    conversion = ConversionPlan.from_json(runtime.fetch_uri(plan.plan_uri).read_text())
    with (
        runtime.stage(parent_run_id, "assemble", {"storage": storage}) as run,
        runtime.scratch("assemble") as scratch,
    ):
        with open_source(source) as teacher:  # recorded digests checked; validated once per process
            result = assemble(
                teacher,
                conversion,
                scratch / "dense_model",
                dtype=storage.checkpoint_dtype,
                max_shard_bytes=storage.max_shard_size_mb * MIB,
            )
        ref = runtime.store.put_dir(result.out_dir, kind="dense-model", name="dense_model")
        run.log_artifact(result.out_dir)
        digest = snapshot_sha256(result.shard_digests)
        run.set_tags({"moe2dense.plan_digest": plan.plan_digest, "moe2dense.checkpoint_digest": digest})
        run.log_metrics({"assemble/num_parameters": float(result.num_parameters)})
        return CheckpointResult(
            checkpoint_uri=runtime.store.uri_for(ref),
            checkpoint_digest=digest,
            shard_digests=result.shard_digests,
            num_parameters=result.num_parameters,
            plan_digest=plan.plan_digest,
            mlflow_run_id=run.run_id,
            stage="assemble",
        )
