"""Stage `calibrate`: the teacher's expert statistics on calibration text (METHOD.md step 1).

rows = train-side text packed into sequences of `seq_len` tokens (moe2dense_platform.corpus.token_rows); the first
⌊num_tokens / seq_len⌋ rows of a seeded permutation are run in batches of `batch_size` through
`moe2dense_core.collect_stats`. The ExpertStats folder (stats.safetensors + stats.json) is published
once to the artifact store (kind `stats`; the stage's MLflow run records its URI and content address,
tasks/publish.py); the calibration tokens are logged as an MLflow input with their digest. The
expensive read of the teacher: cached on snapshot digest, the content digest of the calibration text
(never its path), the rest of the calibration and collection config (of its memory bounds only those
that change a bit of the statistics, `bounds_that_round`) and the statistics requested
(`calibrate_parts`), so a sweep over plans calibrates once. The flow asks for what its plans read
(`moe2dense_core.plan.stats_request_for`: router statistics only for `sf` + `prune`, the all-expert
outputs and their Gram only for the scorers and groupers that need them).
"""

from __future__ import annotations

from typing import Any

import torch

from moe2dense_core.data import tokens_digest
from moe2dense_core.distill.precision import compute_dtype, resolve_device
from moe2dense_core.pretrained import load_tokenizer
from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.request import EVERYTHING, StatsRequest
from moe2dense_platform.caching import without
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.progress import StageProgress
from moe2dense_platform.recipe import CalibrationConfig, StatisticsConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.tracking import TAG_DATA_DIGEST, TAG_SNAPSHOT_DIGEST, TAG_STATS_DIGEST
from tasks.publish import finish, publish_dir
from tasks.results import CalibrationResult, SourceResult
from tasks.source import open_source
from tasks.stage import stage

MEMORY_BOUNDS = ("max_chunk_bytes", "max_hidden_bytes", "max_block_bytes")
"""StatisticsConfig fields bounding calibration memory; `bounds_that_round` says which enter the key."""


def calibrate_parts(p: dict[str, Any]) -> list[Any]:
    """Snapshot digest, corpus digest of `calibration.data`, the rest of `calibration`, the statistics
    config less its memory bounds, the bounds that can change a bit of the result (`bounds_that_round`),
    the statistics requested."""
    calibration, statistics, request = p["calibration"], p["statistics"], p.get("request", EVERYTHING)
    return [
        p["source"].snapshot_digest,
        corpus_digest(calibration.data),
        without(calibration, "data"),
        without(statistics, *MEMORY_BOUNDS),
        bounds_that_round(statistics, request),
        {"expert_outputs": request.expert_outputs, "gram": request.gram},
    ]


def bounds_that_round(statistics: StatisticsConfig, request: StatsRequest) -> dict[str, int]:
    """The memory bounds that change the float rounding of the statistics: the stage key holds these.

    With expert outputs requested, every chunk of T_chunk = ⌊max_chunk_bytes / bytes per token⌋ tokens
    adds its own [E] norm sums and [E, E] Gram (and the router sums of its rows) to the float64
    accumulators, and layer_by_layer computes the all-expert outputs f_e(x) [E, T_chunk, H] a block of
    ⌊max_block_bytes / expert bytes⌋ experts at a time: another chunk or block size changes the order of
    the float summations (measured on the tiny fixtures: relative differences ≈ 2e-8 in the output norms
    and the Gram for max_block_bytes = 1 against the default, ≈ 1e-7 for max_chunk_bytes = 1). Left out:
    max_hidden_bytes (a spilled hidden state is the same bytes in a mapped file: exact, for any bound),
    max_block_bytes in_memory (never read) and both bounds for router-only statistics (no chunks; the
    teacher's own routed forward runs each expert on its tokens, bit-identical for any block size).
    """
    if not request.expert_outputs:
        return {}
    if statistics.mode == "in_memory":
        return {"max_chunk_bytes": statistics.max_chunk_bytes}
    return {"max_chunk_bytes": statistics.max_chunk_bytes, "max_block_bytes": statistics.max_block_bytes}


def calibration_rows(source: SourceResult, calibration: CalibrationConfig) -> torch.Tensor:
    """[⌊num_tokens/seq_len⌋, seq_len] token ids: a seeded sample of the train-side rows."""
    tokenizer = load_tokenizer(source.local_path)
    rows = token_rows(calibration.data, tokenizer, calibration.seq_len, "train")
    wanted = calibration.num_tokens // calibration.seq_len
    if rows.shape[0] < wanted:
        raise ValueError(
            f"calibration.num_tokens={calibration.num_tokens} needs {wanted} rows of "
            f"{calibration.seq_len} tokens; the calibration data gives only {rows.shape[0]}"
        )
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(calibration.seed))
    return rows[order[:wanted]]


@stage(
    "calibrate",
    result=CalibrationResult,
    key=calibrate_parts,
    lineage={TAG_STATS_DIGEST: "stats_digest", TAG_DATA_DIGEST: "data_digest"},
)
def calibrate_task(
    source: SourceResult,
    calibration: CalibrationConfig,
    statistics: StatisticsConfig,
    parent_run_id: str,
    request: StatsRequest = EVERYTHING,
) -> CalibrationResult:
    runtime = Runtime.from_environment()
    rows = calibration_rows(source, calibration)
    data_digest = tokens_digest(rows)
    # progress counts batches in memory, decoder layers (all tokens each) layer by layer
    tokens_per_step = calibration.batch_size * calibration.seq_len if statistics.mode == "in_memory" else None
    with runtime.stage(
        parent_run_id, "calibrate", {"calibration": calibration, "statistics": statistics}
    ) as run:
        log_token_input(
            run,
            context="calibration",
            source=str(calibration.data.source),
            digest=data_digest,
            num_tokens=rows.numel(),
        )
        with open_source(source) as teacher:  # recorded digests checked; validated once per process
            stats = collect_stats(
                teacher,
                list(rows.split(calibration.batch_size)),
                mode=statistics.mode,
                request=request,
                dtype=compute_dtype(statistics.dtype, resolve_device(statistics.device)),
                device=resolve_device(statistics.device),
                max_chunk_bytes=statistics.max_chunk_bytes,
                max_hidden_bytes=statistics.max_hidden_bytes,
                max_block_bytes=statistics.max_block_bytes,
                on_progress=StageProgress("calibrate", tokens_per_step=tokens_per_step).update,
            )
        with runtime.scratch("stats") as scratch:
            stats_digest = stats.save(scratch / "stats")
            stats_uri = publish_dir(runtime, run, scratch / "stats", kind="stats")
        run.set_tags({TAG_SNAPSHOT_DIGEST: source.snapshot_digest})
        run.log_metrics({"calibration/tokens": float(rows.numel())})
        result = CalibrationResult(
            stats_uri=stats_uri,
            stats_digest=stats_digest,
            data_digest=data_digest,
            num_tokens=rows.numel(),
            mlflow_run_id=run.run_id,
        )
        finish(run, "calibrate", result)
        return result
