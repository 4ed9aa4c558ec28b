"""Stage `distill`: knowledge distillation of the assembled student from the MoE teacher (METHOD.md step 6).

The teacher runs online from the snapshot; data = train-side text of `distillation.data` packed into
rows of `distillation.seq_len` (moe2dense_platform.corpus.token_rows; never held-out text). The core loop logs its
curves (loss, KL, lr, grad norm, tokens/s) as step metrics on the stage's MLflow run. The distilled
student is saved with `save_pretrained` next to its tokenizer and the assembly's model card and
provenance, and published once to the artifact store (kind `distilled-model`; the MLflow run records
its URI and content address). Cached on student digest + teacher snapshot digest (online teacher) +
content digest of the training text + the rest of the distillation config (`distill_parts`).

Training checkpoints (every `distillation.train.checkpoint_every` steps and at the end) go to
`<home>/distill-checkpoints/<the stage's cache key>`, not a temporary folder: a run that was killed
resumes from its newest checkpoint when the flow runs again (losing at most one checkpoint interval;
the stage run's param `distill.start_step` says where it began), and the folder is removed once the
distilled model is stored. Each checkpoint records the student and teacher digests, so it can only
resume this stage's inputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from moe2dense_core.distill import distill, tokens_digest
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.io.digests import file_sha256, snapshot_sha256
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from moe2dense_platform.caching import without
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.progress import ProgressMetricLogger
from moe2dense_platform.recipe import DistillationConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_PLAN_DIGEST,
    TAG_SNAPSHOT_DIGEST,
    TAG_STUDENT_DIGEST,
)
from tasks.publish import finish, publish_dir, record_inputs
from tasks.results import CheckpointResult, SourceResult
from tasks.stage import STAGES, stage

PROVENANCE_FILES = ("README.md", "moe2dense.json")
CHECKPOINTS_FOLDER = "distill-checkpoints"


def checkpoint_folder(
    runtime: Runtime, source: SourceResult, student: CheckpointResult, distillation: DistillationConfig
) -> Path:
    """Where this stage's training checkpoints live: one folder per cache key (module docstring)."""
    key = STAGES["distill"].key(None, {"source": source, "student": student, "distillation": distillation})
    return runtime.settings.home / CHECKPOINTS_FOLDER / key


def distill_parts(p: dict[str, Any]) -> list[Any]:
    """Student digest, snapshot digest, corpus digest of `distillation.data`, the rest of `distillation`."""
    distillation = p["distillation"]
    return [p["student"].checkpoint_digest, p["source"].snapshot_digest, corpus_digest(distillation.data),
            without(distillation, "data")]


@stage("distill", result=CheckpointResult, key=distill_parts,
       lineage={TAG_PLAN_DIGEST: "plan_digest", TAG_CHECKPOINT_DIGEST: "checkpoint_digest"})
def distill_task(
    source: SourceResult, student: CheckpointResult, distillation: DistillationConfig, parent_run_id: str
) -> CheckpointResult:
    runtime = Runtime.from_environment()
    student_dir = runtime.fetch_uri(student.checkpoint_uri)
    tokenizer = load_tokenizer(student_dir)
    rows = token_rows(distillation.data, tokenizer, distillation.seq_len, "train")
    with (
        runtime.stage(parent_run_id, "distill", {"distillation": distillation}) as run,
        runtime.scratch("distill") as scratch,
    ):
        record_inputs(run, runtime, student=student.checkpoint_uri)
        log_token_input(
            run,
            context="distillation",
            source=str(distillation.data.source),
            digest=tokens_digest(rows),
            num_tokens=rows.numel(),
        )
        model = load_causal_lm(student_dir)
        teacher = load_causal_lm(source.local_path, dtype=load_dtype(torch.device("cpu")))
        logger = ProgressMetricLogger(
            run, "distill", distillation.train.max_steps,
            tokens_per_step=distillation.train.sequences_per_step(1) * rows.shape[1],
        )
        checkpoints = checkpoint_folder(runtime, source, student, distillation)
        outcome = distill(
            model, teacher, rows, distillation.train, logger=logger, checkpoint_dir=checkpoints, resume=True,
            student_digest=student.checkpoint_digest, teacher_digest=source.snapshot_digest,
        )
        out_dir = scratch / "distilled_model"
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        for name in PROVENANCE_FILES:
            if (Path(student_dir) / name).is_file():
                shutil.copy2(Path(student_dir) / name, out_dir / name)
        shards = {p.name: file_sha256(p) for p in sorted(out_dir.glob("*.safetensors"))}
        digest = snapshot_sha256(shards)
        uri = publish_dir(runtime, run, out_dir, kind="distilled-model", name="distilled_model")
        run.set_tags({TAG_STUDENT_DIGEST: student.checkpoint_digest, TAG_SNAPSHOT_DIGEST: source.snapshot_digest})
        run.log_metrics(
            {"distill/steps": float(outcome.steps), "distill/tokens_seen": float(outcome.tokens_seen)}
        )
        shutil.rmtree(checkpoints, ignore_errors=True)  # stored: nothing left to resume
        result = CheckpointResult(
            checkpoint_uri=uri,
            checkpoint_digest=digest,
            shard_digests=shards,
            num_parameters=sum(p.numel() for p in model.parameters()),
            plan_digest=student.plan_digest,
            mlflow_run_id=run.run_id,
            stage="distill",
        )
        finish(run, "distill", result)
        return result
