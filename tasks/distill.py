"""Stage `distill`: knowledge distillation of the assembled student from the MoE teacher (METHOD.md step 6).

The teacher runs online from the snapshot (`distillation.teacher: online`), or, when `cached`, is never
loaded: training reads the top-k cache of stage `teacher_logits` (its result passed as `teacher_logits`)
from the artifact store shard by shard (moe2dense_platform/stored_topk_cache.py), refused before any
model loads unless it was written for these very rows, teacher, temperature, routing and
`distillation.teacher_cache`. Data = train-side text of `distillation.data` packed into
rows of `distillation.seq_len` (moe2dense_platform.corpus.token_rows; never held-out text). The core loop logs its
curves (loss, KL, lr, grad norm, tokens/s) as step metrics on the stage's MLflow run. The distilled
student is saved with `save_pretrained` next to its tokenizer and the assembly's model card and
provenance, and published once to the artifact store (kind `distilled-model`; the MLflow run records
its URI and content address). Cached on student digest + teacher snapshot digest + content digest of
the training text + the rest of the distillation config, `nproc_per_node` resolved on the worker (`auto`:
its CUDA devices) + the teacher cache's digest (`distill_parts`).

Training checkpoints (every `distillation.train.checkpoint_every` steps and at the end) go to
`<home>/distill-checkpoints/<the stage's cache key>`, not a temporary folder: a run that was killed
resumes from its newest checkpoint when the flow runs again (losing at most one checkpoint interval;
the stage run's param `distill.start_step` says where it began), and the folder is removed once the
distilled model is stored. Each checkpoint records the student and teacher digests, so it can only
resume this stage's inputs.

With W = distillation.nnodes × nproc_per_node > 1 the stage starts torchrun over W processes
(tasks/distill_launch.py) instead of training in its own process; the launched workers save the model
and their metrics come back into this stage's MLflow run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from moe2dense_core.distill import TopKCache, distill, tokens_digest
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.io.digests import safetensors_digests, snapshot_sha256
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from moe2dense_platform.caching import without
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.progress import ProgressMetricLogger
from moe2dense_platform.recipe import DistillationConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.stored_topk_cache import open_stored_topk_cache
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_PLAN_DIGEST,
    TAG_SNAPSHOT_DIGEST,
    TAG_STUDENT_DIGEST,
)
from tasks.distill_launch import launch_distill, local_processes, process_layout
from tasks.publish import finish, publish_dir, record_inputs
from tasks.results import CheckpointResult, SourceResult, TeacherLogitsResult
from tasks.stage import STAGES, stage

PROVENANCE_FILES = ("README.md", "moe2dense.json")
CHECKPOINTS_FOLDER = "distill-checkpoints"


def checkpoint_folder(
    runtime: Runtime,
    source: SourceResult,
    student: CheckpointResult,
    distillation: DistillationConfig,
    teacher_logits: TeacherLogitsResult | None = None,
) -> Path:
    """Where this stage's training checkpoints live: one folder per cache key (module docstring)."""
    key = STAGES["distill"].key(
        None,
        {
            "source": source,
            "student": student,
            "distillation": distillation,
            "teacher_logits": teacher_logits,
        },
    )
    return runtime.settings.home / CHECKPOINTS_FOLDER / key


def distill_parts(p: dict[str, Any]) -> list[Any]:
    """Student digest, snapshot digest, corpus digest of `distillation.data`, the rest of `distillation`
    (its `teacher_cache` enters as the digest of the cache itself: None for an online teacher), with
    `nproc_per_node` as resolved on the worker that runs the stage (`local_processes`: `auto` = its CUDA
    devices, 1 without) — W = nnodes × that sets the global batch, so workers with different GPU counts
    never share a cache entry under `auto`."""
    distillation, cached = p["distillation"], p.get("teacher_logits")
    return [
        p["student"].checkpoint_digest,
        p["source"].snapshot_digest,
        corpus_digest(distillation.data),
        without(distillation, "data", "teacher_cache", "nproc_per_node"),
        local_processes(distillation.nproc_per_node),
        cached.cache_digest if cached else None,
    ]


def stored_teacher(
    runtime: Runtime,
    source: SourceResult,
    distillation: DistillationConfig,
    teacher_logits: TeacherLogitsResult | None,
    data_digest: str,
) -> TopKCache | None:
    """The teacher cache of a `cached` run, checked against this run (None for an online teacher)."""
    if (distillation.teacher == "cached") != (teacher_logits is not None):
        raise ValueError(
            f"distillation.teacher is {distillation.teacher!r}: a teacher_logits result is passed "
            "to the distill stage exactly when it is 'cached'"
        )
    if teacher_logits is None:
        return None
    cache = open_stored_topk_cache(runtime.store, teacher_logits.manifest_uri)
    train, wanted = distillation.train, distillation.teacher_cache
    cache.check_fits(
        data_digest=data_digest,
        temperature=train.temperature,
        teacher_top_k=train.teacher_top_k,
        teacher_digest=source.snapshot_digest,
        k=wanted.k,
        logprob_dtype=wanted.logprob_dtype,
    )
    return cache


@stage(
    "distill",
    result=CheckpointResult,
    key=distill_parts,
    lineage={TAG_PLAN_DIGEST: "plan_digest", TAG_CHECKPOINT_DIGEST: "checkpoint_digest"},
)
def distill_task(
    source: SourceResult,
    student: CheckpointResult,
    distillation: DistillationConfig,
    parent_run_id: str,
    teacher_logits: TeacherLogitsResult | None = None,
) -> CheckpointResult:
    runtime = Runtime.from_environment()
    layout = process_layout(distillation)
    student_dir = runtime.fetch_uri(student.checkpoint_uri)
    tokenizer = load_tokenizer(student_dir)
    rows = token_rows(distillation.data, tokenizer, distillation.seq_len, "train")
    cache = stored_teacher(runtime, source, distillation, teacher_logits, tokens_digest(rows))
    with (
        runtime.stage(parent_run_id, "distill", {"distillation": distillation}) as run,
        runtime.scratch("distill") as scratch,
    ):
        cached_input = {"teacher_logits": teacher_logits.manifest_uri} if teacher_logits else {}
        record_inputs(run, runtime, student=student.checkpoint_uri, **cached_input)
        log_token_input(
            run,
            context="distillation",
            source=str(distillation.data.source),
            digest=tokens_digest(rows),
            num_tokens=rows.numel(),
        )
        logger = ProgressMetricLogger(
            run,
            "distill",
            distillation.train.max_steps,
            tokens_per_step=distillation.tokens_per_step(layout.world_size),
        )
        checkpoints = checkpoint_folder(runtime, source, student, distillation, teacher_logits)
        out_dir = scratch / "distilled_model"
        if layout.world_size > 1:
            launched = launch_distill(
                rows,
                distillation.train,
                layout=layout,
                workdir=scratch / "launch",
                home=runtime.settings.home,
                student_dir=Path(student_dir),
                output_dir=out_dir,
                logger=logger,
                teacher_model=None if teacher_logits else Path(source.local_path),
                teacher_cache_uri=teacher_logits.manifest_uri if teacher_logits else None,
                checkpoint_dir=checkpoints,
                resume=True,
                student_digest=student.checkpoint_digest,
                teacher_digest=source.snapshot_digest,
            )
            outcome, num_parameters = launched.distill_result(), launched.num_parameters
        else:
            model = load_causal_lm(student_dir)
            teacher = (
                cache
                if cache is not None
                else load_causal_lm(source.local_path, dtype=load_dtype(torch.device("cpu")))
            )
            outcome = distill(
                model,
                teacher,
                rows,
                distillation.train,
                logger=logger,
                checkpoint_dir=checkpoints,
                resume=True,
                student_digest=student.checkpoint_digest,
                teacher_digest=source.snapshot_digest,
            )
            model.save_pretrained(out_dir)
            num_parameters = sum(p.numel() for p in model.parameters())
        tokenizer.save_pretrained(out_dir)
        for name in PROVENANCE_FILES:
            if (Path(student_dir) / name).is_file():
                shutil.copy2(Path(student_dir) / name, out_dir / name)
        shards = safetensors_digests(out_dir)
        digest = snapshot_sha256(shards)
        uri = publish_dir(runtime, run, out_dir, kind="distilled-model", name="distilled_model")
        run.set_tags(
            {TAG_STUDENT_DIGEST: student.checkpoint_digest, TAG_SNAPSHOT_DIGEST: source.snapshot_digest}
        )
        run.log_metrics(
            {"distill/steps": float(outcome.steps), "distill/tokens_seen": float(outcome.tokens_seen)}
        )
        shutil.rmtree(checkpoints, ignore_errors=True)  # stored: nothing left to resume
        result = CheckpointResult(
            checkpoint_uri=uri,
            checkpoint_digest=digest,
            shard_digests=shards,
            num_parameters=num_parameters,
            plan_digest=student.plan_digest,
            mlflow_run_id=run.run_id,
            stage="distill",
        )
        finish(run, "distill", result)
        return result
