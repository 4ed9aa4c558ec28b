"""Stage `baseline`: one baseline student of a comparison (METHOD.md "Baselines"), built and published.

    d2d          the dense twin width-pruned to the reference student's parameter count
                 (moe2dense_core.baselines.d2d_prune: FFN channels, and hidden channels down to
                 `hidden_size` when set, ranked by one pass over the comparison's calibration rows);
    random_init  the reference student's architecture (its config.json), every weight initialised with `seed`;
    random_ffn   the same, with the teacher's non-FFN weights (attention, embeddings, norms, LM head).

The reference student is the comparison's first converted student (moe2dense_platform/compare_recipe.py);
its parameter count, the d2d target, is the core's count from its config.json (`config_parameter_count`).
A baseline is written like an assembled student: `storage.checkpoint_dtype` safetensors shards of at
most `storage.max_shard_size_mb`, the TEACHER's tokenizer (every student of a comparison trains on the
same token rows; a twin with another vocabulary is refused before any pruning) and `baseline.json`
(kind, seed, reference and teacher digests, d2d's choices); checked tensor by tensor against its
config (check_dense_checkpoint) and published once (kind `baseline-model`).

Cached on the student's kind and options (not its name), the teacher snapshot digest, the reference
checkpoint digest and storage (not the export folder), plus the seed for a random student, or for d2d
the twin (the source stage's key parts: never cached for a hub branch) and the calibration text's
content digest and settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from moe2dense_core.baselines import (
    config_parameter_count,
    count_parameters,
    d2d_prune,
    random_ffn_student,
    random_init_student,
)
from moe2dense_core.baselines.d2d_prune import BASELINE_RECORD
from moe2dense_core.checkpoint.dense import check_dense_checkpoint
from moe2dense_core.checkpoint.tokenizer import tokenizer_files
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.digests import safetensors_digests, snapshot_sha256
from moe2dense_core.io.resolve import resolve_model
from moe2dense_core.pretrained import load_causal_lm, load_config, load_tokenizer
from moe2dense_platform.caching import without
from moe2dense_platform.compare_recipe import StudentSpec
from moe2dense_platform.corpus import corpus_digest
from moe2dense_platform.recipe import CalibrationConfig, SourceConfig, StorageConfig
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_CHECKPOINT_DIGEST, TAG_SNAPSHOT_DIGEST
from tasks.calibrate import calibration_rows
from tasks.publish import finish, publish_dir, record_inputs
from tasks.results import CheckpointResult, SourceResult
from tasks.source import source_parts
from tasks.stage import stage

BASELINE_SCHEMA_VERSION = 1
MIB = 1024 * 1024


def baseline_parts(p: dict[str, Any]) -> list[Any] | None:
    """Kind + options, snapshot digest, reference digest, storage; + seed (random) or twin and calibration
    (d2d). None (not cached) when the twin is a hub branch or tag."""
    student: StudentSpec = p["student"]
    parts = [
        without(student, "name"),
        p["source"].snapshot_digest,
        p["reference"].checkpoint_digest,
        without(p["storage"], "export_dir"),
    ]
    if student.kind != "d2d":
        return [*parts, p["seed"]]
    twin = source_parts({"source": p["twin"]})
    calibration: CalibrationConfig = p["calibration"]
    if twin is None:
        return None
    return [*parts, twin, corpus_digest(calibration.data), without(calibration, "data")]


def twin_folder(twin: SourceConfig, teacher_dir: str) -> Path:
    """The dense twin's local folder (a hub id fetched at its revision); CheckpointError unless its
    vocabulary is the teacher's: config vocab_size (the logits distillation compares) and, when it
    ships a tokenizer, the token → id map."""
    folder = resolve_model(twin.model, revision=None if twin.is_local else twin.revision)
    size, teacher_size = int(load_config(folder).vocab_size), int(load_config(teacher_dir).vocab_size)
    if size != teacher_size:
        raise CheckpointError(f"twin {folder}: vocab_size {size}, the teacher's is {teacher_size}")
    if (
        tokenizer_files(folder)
        and load_tokenizer(folder).get_vocab() != load_tokenizer(teacher_dir).get_vocab()
    ):
        raise CheckpointError(
            f"twin {folder}: its tokenizer's vocabulary is not the teacher's; the d2d student would be "
            "distilled on other token ids than the teacher's"
        )
    return folder


def build_baseline(
    student: StudentSpec,
    source: SourceResult,
    reference_dir: Path,
    calibration: CalibrationConfig,
    twin: SourceConfig | None,
    seed: int,
    workdir: Path,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model, what baseline.json records about how it was made) for one baseline student."""
    if student.kind == "random_init":
        return random_init_student(reference_dir, seed=seed), {"seed": seed}
    if student.kind == "random_ffn":
        return random_ffn_student(source.local_path, reference_dir, seed=seed), {"seed": seed}
    if twin is None:
        raise CheckpointError(f"student {student.name!r} is d2d and the comparison names no twin")
    folder = twin_folder(twin, source.local_path)
    rows = calibration_rows(source, calibration)
    pruned = d2d_prune(
        folder,
        rows.split(calibration.batch_size),
        config_parameter_count(reference_dir),
        workdir / "pruned",
        width_multiple=student.width_multiple,
        hidden_size=student.hidden_size,
    )
    record = {k: v for k, v in asdict(pruned).items() if k not in ("out_dir", "source_dir")}
    record.update({"twin": twin.model, "twin_revision": twin.revision})
    return load_causal_lm(workdir / "pruned", dtype=torch.float32), record


@stage(
    "baseline",
    result=CheckpointResult,
    key=baseline_parts,
    lineage={TAG_CHECKPOINT_DIGEST: "checkpoint_digest"},
)
def baseline_student_task(
    student: StudentSpec,
    source: SourceResult,
    reference: CheckpointResult,
    calibration: CalibrationConfig,
    twin: SourceConfig | None,
    seed: int,
    storage: StorageConfig,
    parent_run_id: str,
) -> CheckpointResult:
    runtime = Runtime.from_environment()
    reference_dir = runtime.fetch_uri(reference.checkpoint_uri)
    params = {"student": student, "seed": seed, "storage": storage}
    with (
        runtime.stage(parent_run_id, f"baseline-{student.kind}", params) as run,
        runtime.scratch("baseline") as scratch,
    ):
        record_inputs(run, runtime, reference=reference.checkpoint_uri)
        model, made = build_baseline(student, source, reference_dir, calibration, twin, seed, scratch)
        out_dir = scratch / "baseline_model"
        model.to(getattr(torch, storage.checkpoint_dtype)).save_pretrained(
            out_dir, max_shard_size=f"{storage.max_shard_size_mb}MB"
        )
        load_tokenizer(source.local_path).save_pretrained(out_dir)
        record = {
            "schema_version": BASELINE_SCHEMA_VERSION,
            "kind": student.kind,
            "reference_checkpoint_digest": reference.checkpoint_digest,
            "teacher_snapshot_digest": source.snapshot_digest,
            **made,
        }
        (out_dir / BASELINE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        check_dense_checkpoint(out_dir)
        shards = safetensors_digests(out_dir)
        uri = publish_dir(runtime, run, out_dir, kind="baseline-model", name="baseline_model")
        run.set_tags({TAG_SNAPSHOT_DIGEST: source.snapshot_digest})
        num_parameters = count_parameters(model)
        run.log_metrics({"baseline/num_parameters": float(num_parameters)})
        result = CheckpointResult(
            checkpoint_uri=uri,
            checkpoint_digest=snapshot_sha256(shards),
            shard_digests=shards,
            num_parameters=num_parameters,
            plan_digest=None,
            mlflow_run_id=run.run_id,
            stage="baseline",
        )
        finish(run, "baseline", result)
        return result
