"""Stage `teacher_logits`: the teacher's top-k log-probabilities on the distillation rows, once (offline KD).

Runs when `distillation.teacher` is `cached`. rows = the train-side text of `distillation.data` packed
into rows of `distillation.seq_len` (moe2dense_platform.corpus.token_rows: the very rows `distill`
trains on, tokenized with the teacher's tokenizer, which the student carries). The teacher (its recorded
digests checked, `open_source`) runs once over them on `teacher_cache.device`, under the
distillation's precision (the one precision rule: fp32 on a CPU without native bf16), with the
distillation's temperature T and teacher routing k', and `moe2dense_core.distill.write_topk_shards`
keeps per token its k most probable ids, their log-probabilities (`teacher_cache.logprob_dtype`) and
the tail log-mass. Each shard is stored in the artifact store as soon as it is written (kind
`teacher-logits-shard`, scanned for credentials, its content address = its sha256 in the cache
manifest) and removed locally; the cache manifest is stored last (kind `teacher-logits`,
moe2dense_platform/stored_topk_cache.py), so a failed pass leaves shards but never a manifest.
A failed or killed pass has no Prefect cache entry, so the rerun runs the teacher again over every shard
and reuses nothing unchecked: a shard the failed pass stored has the rerun's content address only if its
bytes are the same, and then the put finds that complete artifact (its store manifest went last) and
stores nothing twice. Shards of a failed pass that no rerun reproduces (other settings) stay in the store
unreferenced. A SIGKILLed stage leaves its scratch folder (`MOE2DENSE_HOME/tmp/teacher-logits-*`: the
rows, at most one unstored shard per rank); its ranks stop after their current shard
(tasks/teacher_logits_workers.py).

Processes: P = min(local_processes(`teacher_cache.processes`), shards) (`teacher_processes`; `auto` =
the worker's CUDA devices, 1 without CUDA). P = 1 runs the teacher in this process (the stage holds one
shard on disk); P > 1 starts P processes (tasks/teacher_logits_workers.py), rank r on cuda:r (else the
CPU) writing shards i ≡ r (mod P), and this process stores each shard as it appears, then joins the
ranks' manifest parts in shard order (`merge_manifest_parts`). The shard files and the manifest are
byte-identical for every P, so `processes` is not part of the cache key.

Size [defined here]: bytes/token = k·(4 + b) + 4 + 4 (b = 4 for float32, 2 for float16), logged as
metric `teacher_logits/bytes_per_token` with `teacher_logits/tokens` and `teacher_logits/stored_bytes`
(the shard files, headers included), and as param `teacher_logits.bytes_per_position` (one position per
token; a param named `…_token` would be masked as a credential name, moe2dense_platform/redaction.py).

Cached on snapshot digest, the content digest of the distillation text, seq_len, the distillation's
temperature, teacher routing k' and precision, and `teacher_cache` but its `processes`
(`teacher_logits_parts`) — not on the student or the optimiser, so every student distilled on the same
teacher and data reuses one cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moe2dense_core.checkpoint.tokenizer import config_vocab_size
from moe2dense_core.distill import tokens_digest
from moe2dense_core.distill.precision import resolve_device, resolve_precision
from moe2dense_core.distill.topk_cache import (
    MANIFEST_NAME,
    bytes_per_token,
    merge_manifest_parts,
    shard_spans,
    write_manifest,
)
from moe2dense_core.errors import DistillError
from moe2dense_core.pretrained import load_tokenizer
from moe2dense_platform.caching import without
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.progress import StageProgress
from moe2dense_platform.recipe import DistillationConfig, TeacherCacheConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.stored_topk_cache import MANIFEST_KIND, SHARD_KIND
from moe2dense_platform.tracking import TAG_DATA_DIGEST, TAG_SNAPSHOT_DIGEST
from tasks.distill_launch import local_processes
from tasks.publish import finish, publish_text
from tasks.results import SourceResult, TeacherLogitsResult
from tasks.source import open_source
from tasks.stage import stage
from tasks.teacher_logits_workers import TeacherPassSpec, run_teacher_workers, teacher_pass


def teacher_logits_parts(p: dict[str, Any]) -> list[Any]:
    """Snapshot digest, corpus digest of `distillation.data`, seq_len, T, k', precision, `teacher_cache`
    but its `processes` (the cache is the same for any number of processes)."""
    distillation: DistillationConfig = p["distillation"]
    train = distillation.train
    return [
        p["source"].snapshot_digest,
        corpus_digest(distillation.data),
        distillation.seq_len,
        train.temperature,
        train.teacher_top_k,
        train.precision,
        without(distillation.teacher_cache, "processes"),
    ]


def teacher_processes(cache: TeacherCacheConfig, num_shards: int) -> int:
    """P = min(local_processes(teacher_cache.processes), shards) (no process without a shard), ≥ 1;
    DistillError before any work when P ranks on CUDA outnumber this worker's CUDA devices."""
    processes = max(min(local_processes(cache.processes), num_shards), 1)
    devices = torch.cuda.device_count()
    if processes > 1 and resolve_device(cache.device).type == "cuda" and processes > devices:
        raise DistillError(
            f"distillation.teacher_cache.processes = {cache.processes} on device {cache.device!r}: this worker "
            f"has {devices} CUDA devices; use at most {devices}, or `auto`"
        )
    return processes


@stage(
    "teacher_logits",
    result=TeacherLogitsResult,
    key=teacher_logits_parts,
    lineage={TAG_SNAPSHOT_DIGEST: "teacher_digest", TAG_DATA_DIGEST: "data_digest"},
)
def teacher_logits_task(
    source: SourceResult, distillation: DistillationConfig, parent_run_id: str
) -> TeacherLogitsResult:
    runtime = Runtime.from_environment()
    cache, train = distillation.teacher_cache, distillation.train
    rows = token_rows(distillation.data, load_tokenizer(source.local_path), distillation.seq_len, "train")
    data_digest = tokens_digest(rows)
    per_token = bytes_per_token(cache.k, cache.logprob_dtype)
    device = resolve_device(cache.device)
    resolve_precision(train.precision, device)  # refuses bf16 where it is not native, before any work
    num_shards = len(shard_spans(rows.shape[0], cache.rows_per_shard))
    processes = teacher_processes(cache, num_shards)
    params = {
        "teacher_cache": cache,
        "seq_len": distillation.seq_len,
        "temperature": train.temperature,
        "teacher_top_k": train.teacher_top_k,
        "precision": train.precision,
    }
    with (
        runtime.stage(parent_run_id, "teacher_logits", params) as run,
        runtime.scratch("teacher-logits") as scratch,
    ):
        run.log_params({"teacher_logits.bytes_per_position": per_token})
        log_token_input(
            run,
            context="distillation",
            source=str(distillation.data.source),
            digest=data_digest,
            num_tokens=rows.numel(),
        )
        spec = TeacherPassSpec(
            teacher_dir=Path(source.local_path),
            rows_file=scratch / "workers" / "rows.safetensors",
            out_dir=scratch / "cache",
            k=cache.k,
            temperature=train.temperature,
            teacher_top_k=train.teacher_top_k,
            teacher_digest=source.snapshot_digest,
            batch_size=cache.batch_size,
            rows_per_shard=cache.rows_per_shard,
            precision=train.precision,
            logprob_dtype=cache.logprob_dtype,
            device=str(device),
            processes=processes,
            threads=max(torch.get_num_threads() // processes, 1),
        )
        run.log_params({"teacher_logits.processes": spec.processes})
        progress = StageProgress(
            "teacher_logits", tokens_per_step=cache.rows_per_shard * distillation.seq_len
        )
        stored: dict[str, tuple[str, int]] = {}  # shard file → (sha256 in the store, bytes)

        def store_shard(path: Path) -> None:
            runtime.redactor.check_file(path)
            size = path.stat().st_size
            stored[path.name] = (runtime.store.put_file(path, kind=SHARD_KIND).sha256, size)
            path.unlink()
            progress.update(len(stored), num_shards)

        with open_source(source) as opened:  # recorded digests checked before the teacher is loaded
            vocab_size = config_vocab_size(opened.config, f"{source.local_path}/config.json")
            if cache.k > vocab_size:
                raise DistillError(
                    f"distillation.teacher_cache.k = {cache.k} exceeds the teacher's vocabulary "
                    f"({vocab_size} ids); use at most {vocab_size} (= exact)"
                )
            if spec.processes == 1:
                parts = [teacher_pass(spec, 0, rows, on_shard=lambda path, _: store_shard(path))]
            else:
                parts = run_teacher_workers(spec, rows, scratch / "workers", on_shard=store_shard)
        manifest = merge_manifest_parts(parts)
        for shard in manifest.shards:
            if stored[shard.file][0] != shard.sha256:
                raise DistillError(f"teacher cache shard {shard.file} changed between writing and storing it")
        write_manifest(spec.out_dir, manifest)
        manifest_text = (spec.out_dir / MANIFEST_NAME).read_text()
        stored_bytes = sum(size for _, size in stored.values())
        uri = publish_text(runtime, run, manifest_text, kind=MANIFEST_KIND, name=MANIFEST_NAME)
        run.log_metrics(
            {
                "teacher_logits/tokens": float(rows.numel()),
                "teacher_logits/bytes_per_token": float(per_token),
                "teacher_logits/stored_bytes": float(stored_bytes),
            }
        )
        result = TeacherLogitsResult(
            manifest_uri=uri,
            cache_digest=runtime.store.ref_from_uri(uri).sha256,
            teacher_digest=source.snapshot_digest,
            data_digest=manifest.data_digest,
            k=manifest.k,
            logprob_dtype=manifest.logprob_dtype,
            num_tokens=rows.numel(),
            bytes_per_token=per_token,
            stored_bytes=stored_bytes,
            mlflow_run_id=run.run_id,
        )
        finish(run, "teacher_logits", result)
        return result
