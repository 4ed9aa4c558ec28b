"""Stage `teacher_logits`: the teacher's top-k log-probabilities on the distillation rows, once (offline KD).

Runs when `distillation.teacher` is `cached`. rows = the train-side text of `distillation.data` packed
into rows of `distillation.seq_len` (moe2dense_platform.corpus.token_rows: the very rows `distill`
trains on, tokenized with the teacher's tokenizer, which the student carries). The teacher (its recorded
digests checked, `open_source`) runs once over them on `teacher_cache.device`, under the
distillation's precision (the one precision rule: fp32 on a CPU without native bf16), with the
distillation's temperature T and teacher routing k', and `moe2dense_core.distill.write_topk_cache`
keeps per token its k most probable ids, their log-probabilities (`teacher_cache.logprob_dtype`) and
the tail log-mass. Each shard is stored in the artifact store as soon as it is written (kind
`teacher-logits-shard`, scanned for credentials, its content address = its sha256 in the cache
manifest) and removed locally, so the stage holds one shard on disk; the cache manifest is stored last
(kind `teacher-logits`, moe2dense_platform/stored_topk_cache.py).

Size [defined here]: bytes/token = k·(4 + b) + 4 + 4 (b = 4 for float32, 2 for float16), logged as
metric `teacher_logits/bytes_per_token` with `teacher_logits/tokens` and `teacher_logits/stored_bytes`
(the shard files, headers included), and as param `teacher_logits.bytes_per_position` (one position per
token; a param named `…_token` would be masked as a credential name, moe2dense_platform/redaction.py).

Cached on snapshot digest, the content digest of the distillation text, seq_len, the distillation's
temperature, teacher routing k' and precision, and `teacher_cache` (`teacher_logits_parts`) — not on the
student or the optimiser, so every student distilled on the same teacher and data reuses one cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe2dense_core.distill import tokens_digest
from moe2dense_core.distill.precision import load_dtype, resolve_device
from moe2dense_core.distill.topk_cache import MANIFEST_NAME, CacheShard, bytes_per_token, write_topk_cache
from moe2dense_core.errors import DistillError
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.progress import StageProgress
from moe2dense_platform.recipe import DistillationConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.stored_topk_cache import MANIFEST_KIND, SHARD_KIND
from moe2dense_platform.tracking import TAG_DATA_DIGEST, TAG_SNAPSHOT_DIGEST
from tasks.publish import finish, publish_text
from tasks.results import SourceResult, TeacherLogitsResult
from tasks.source import open_source
from tasks.stage import stage


def teacher_logits_parts(p: dict[str, Any]) -> list[Any]:
    """Snapshot digest, corpus digest of `distillation.data`, seq_len, T, k', precision, `teacher_cache`."""
    distillation: DistillationConfig = p["distillation"]
    train = distillation.train
    return [
        p["source"].snapshot_digest,
        corpus_digest(distillation.data),
        distillation.seq_len,
        train.temperature,
        train.teacher_top_k,
        train.precision,
        distillation.teacher_cache,
    ]


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
        device = resolve_device(cache.device)
        with open_source(source):  # recorded digests checked before the teacher is loaded
            teacher = load_causal_lm(source.local_path, dtype=load_dtype(device)).to(device)
        vocab_size = int(teacher.config.vocab_size)
        if cache.k > vocab_size:
            raise DistillError(
                f"distillation.teacher_cache.k = {cache.k} exceeds the teacher's vocabulary "
                f"({vocab_size} ids); use at most {vocab_size} (= exact)"
            )
        progress = StageProgress(
            "teacher_logits", tokens_per_step=cache.rows_per_shard * distillation.seq_len
        )
        num_shards = -(-rows.shape[0] // cache.rows_per_shard)
        stored: list[int] = []

        def store_shard(path: Path, shard: CacheShard) -> None:
            runtime.redactor.check_file(path)
            stored.append(path.stat().st_size)
            runtime.store.put_file(path, kind=SHARD_KIND)
            path.unlink()
            progress.update(len(stored), num_shards)

        manifest = write_topk_cache(
            teacher,
            rows,
            scratch / "cache",
            cache.k,
            temperature=train.temperature,
            teacher_top_k=train.teacher_top_k,
            teacher_digest=source.snapshot_digest,
            batch_size=cache.batch_size,
            rows_per_shard=cache.rows_per_shard,
            precision=train.precision,
            logprob_dtype=cache.logprob_dtype,
            on_shard=store_shard,
        )
        manifest_text = (scratch / "cache" / MANIFEST_NAME).read_text()
        uri = publish_text(runtime, run, manifest_text, kind=MANIFEST_KIND, name=MANIFEST_NAME)
        run.log_metrics(
            {
                "teacher_logits/tokens": float(rows.numel()),
                "teacher_logits/bytes_per_token": float(per_token),
                "teacher_logits/stored_bytes": float(sum(stored)),
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
            stored_bytes=sum(stored),
            mlflow_run_id=run.run_id,
        )
        finish(run, "teacher_logits", result)
        return result
