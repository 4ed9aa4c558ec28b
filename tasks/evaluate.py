"""Stage `evaluate`: held-out perplexity and downstream accuracies of one model (METHOD.md step 7).

Perplexity: the first `perplexity_tokens` tokens of the held-out rows of `evaluation.perplexity_data`,
scored with a sliding window of `seq_len` and stride seq_len/2 (moe2dense_core.evaluate.perplexity).
Downstream (when `evaluation.downstream` is set): the core's EvalConfig through lm-eval with the
model in memory (local jsonl tasks offline, hub task names online). The JSON document (kind
`eval`) goes to the artifact store and MLflow; the numbers ride in the result. Cached on checkpoint
digest + content digests of the held-out text and local task files + the rest of the evaluation
config (tasks/caching.py).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from prefect import task
from pydantic import BaseModel, ConfigDict

from moe2dense_core.distill import tokens_digest
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.evaluate import evaluate_downstream, perplexity
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from tasks.caching import evaluate_key
from tasks.corpus import token_rows
from tasks.recipe import EvaluationConfig
from tasks.result_storage import RESULT_STORAGE
from tasks.runtime import Runtime, log_token_input

EVAL_SCHEMA_VERSION = 1


class EvalTarget(BaseModel):
    """The model to evaluate: a label (student, teacher, …), its digest, and an artifact URI or local folder."""

    model_config = ConfigDict(frozen=True)

    label: str
    checkpoint_digest: str
    location: str


class EvaluationResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    checkpoint_digest: str
    perplexity: float
    downstream_mean_acc: float | None
    downstream: dict[str, float | None]
    eval_uri: str
    mlflow_run_id: str


def evaluate_model(model: Any, tokenizer: Any, evaluation: EvaluationConfig) -> dict[str, Any]:
    """{"perplexity": {...}, "heldout_digest", "downstream": {task: summary}} for an in-memory model."""
    rows = token_rows(evaluation.perplexity_data, tokenizer, evaluation.seq_len, "heldout")
    stream = rows.reshape(-1)[: evaluation.perplexity_tokens]
    ppl = perplexity(
        model,
        stream,
        window=evaluation.seq_len,
        stride=max(1, evaluation.seq_len // 2),
        batch_size=evaluation.batch_size,
    )
    downstream = {}
    if evaluation.downstream is not None:
        downstream = evaluate_downstream(model, tokenizer, evaluation.downstream)["tasks"]
    return {
        "perplexity": {
            "value": ppl.perplexity,
            "mean_nll": ppl.mean_nll,
            "tokens": ppl.num_scored_tokens,
            "window": ppl.window,
            "stride": ppl.stride,
        },
        "heldout_digest": tokens_digest(stream.unsqueeze(0)),
        "downstream": downstream,
    }


@task(name="evaluate", cache_key_fn=evaluate_key, persist_result=True, result_storage=RESULT_STORAGE)
def evaluate_task(
    checkpoint: EvalTarget, evaluation: EvaluationConfig, parent_run_id: str
) -> EvaluationResult:
    runtime = Runtime.from_environment()
    location = checkpoint.location
    model_dir = runtime.fetch_uri(location) if "://" in location else location
    with runtime.stage(parent_run_id, f"evaluate-{checkpoint.label}", {"evaluation": evaluation}) as run:
        model = load_causal_lm(model_dir, dtype=load_dtype(torch.device("cpu")))
        tokenizer = load_tokenizer(model_dir)
        numbers = evaluate_model(model, tokenizer, evaluation)
        log_token_input(
            run,
            context="evaluation",
            source=str(evaluation.perplexity_data.source),
            digest=numbers["heldout_digest"],
            num_tokens=numbers["perplexity"]["tokens"],
        )
        document = {
            "schema_version": EVAL_SCHEMA_VERSION,
            "label": checkpoint.label,
            "checkpoint_digest": checkpoint.checkpoint_digest,
            "config": evaluation.model_dump(mode="json"),
            **numbers,
        }
        text = json.dumps(document, indent=2, sort_keys=True, default=str)
        ref = runtime.store.put_bytes(text.encode(), kind="eval", name=f"eval_{checkpoint.label}.json")
        run.log_text(text, f"eval/eval_{checkpoint.label}.json")
        accuracies = {name: summary.get("acc") for name, summary in numbers["downstream"].items()}
        known = [acc for acc in accuracies.values() if acc is not None]
        mean = sum(known) / len(known) if known else None
        metrics = {"eval/perplexity": numbers["perplexity"]["value"]}
        metrics.update({f"eval/{name}/acc": acc for name, acc in accuracies.items() if acc is not None})
        if mean is not None:
            metrics["eval/mean_acc"] = mean
        run.log_metrics(metrics)
        return EvaluationResult(
            label=checkpoint.label,
            checkpoint_digest=checkpoint.checkpoint_digest,
            perplexity=numbers["perplexity"]["value"],
            downstream_mean_acc=mean,
            downstream=accuracies,
            eval_uri=runtime.store.uri_for(ref),
            mlflow_run_id=run.run_id,
        )
