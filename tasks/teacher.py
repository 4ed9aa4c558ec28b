"""Prefect task: train (or reuse) a from-scratch teacher and save it as a real Hugging Face checkpoint.

Output folder `<out_root>/<kind>-<key[:12]>/` holds what `save_pretrained` writes (config.json,
model.safetensors, generation_config.json), the tokenizer, and `teacher.json` (key, config, corpus
digest, training summary). key = sha256(model config JSON, corpus digest): the same request on the
same corpus reuses the folder instead of training again. The folder is written under a temporary
name and renamed, so a folder with `teacher.json` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NONE

from moe2dense_core.logging import MetricLogger
from moe2dense_core.teacher import TeacherModelConfig, train_teacher
from moe2dense_platform.corpus import DOCUMENT_SEPARATOR, CorpusFiles
from moe2dense_platform.progress import StageProgress
from tasks.stage_events import STATE_HOOKS

TEACHER_RECORD = "teacher.json"


@dataclass(frozen=True)
class TeacherResult:
    """Where the teacher is, its reuse key, whether it was reused, and its training record."""

    path: str
    key: str
    reused: bool
    num_parameters: int
    heldout_perplexity: float
    tokens_trained: int


def teacher_key(config: TeacherModelConfig, corpus_digest: str) -> str:
    """sha256 over the canonical model-config JSON and the corpus digest."""
    canonical = json.dumps(
        {"config": config.model_dump(mode="json"), "corpus": corpus_digest}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def train_or_reuse_teacher(
    corpus: CorpusFiles,
    config: TeacherModelConfig,
    out_root: Path,
    *,
    logger: MetricLogger | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TeacherResult:
    """Train a teacher on `corpus.train` (tokenizer included, `moe2dense_core.teacher.train_teacher`)
    unless an identical one is already saved."""
    key = teacher_key(config, corpus.digest)
    final = Path(out_root) / f"{config.kind}-{key[:12]}"
    record_path = final / TEACHER_RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            return TeacherResult(str(final), key, True, **record["result"])
    train_documents = corpus.train.read_text(encoding="utf-8").split(DOCUMENT_SEPARATOR)
    heldout_documents = corpus.heldout.read_text(encoding="utf-8").split(DOCUMENT_SEPARATOR)
    trained = train_teacher(train_documents, heldout_documents, config, logger=logger, on_step=on_step)
    model, tokenizer, summary = trained.model, trained.tokenizer, trained.summary
    result = {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "heldout_perplexity": summary.heldout_perplexity,
        "tokens_trained": summary.tokens_trained,
    }
    Path(out_root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_root, prefix=f".{final.name}."))
    try:
        model.to(torch.float32).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {
            "key": key,
            "config": config.model_dump(mode="json"),
            "corpus_digest": corpus.digest,
            "training": asdict(summary),
            "result": result,
        }
        (staging / TEACHER_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
        if final.exists():  # an incomplete or stale folder (no matching record): replace it
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TeacherResult(str(final), key, False, **result)


@task(name="teacher", cache_policy=NONE, persist_result=False, **STATE_HOOKS)
def train_teacher_task(corpus: CorpusFiles, config: TeacherModelConfig, out_root: str) -> TeacherResult:
    """Prefect adapter of `train_or_reuse_teacher` (the folder key is the cache: see module docstring).
    Training steps are reported as progress of stage `teacher-<kind>` (moe2dense_platform/progress.py: bars for the
    CLI, throttled plain log lines when stdout is not a terminal); a reused teacher reports none."""
    progress = StageProgress(f"teacher-{config.kind}", tokens_per_step=config.tokens_per_step)
    return train_or_reuse_teacher(
        corpus, config, Path(out_root), on_step=lambda step, _loss: progress.update(step + 1, config.steps)
    )
