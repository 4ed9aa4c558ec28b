"""Stage `evaluate`: held-out perplexity and downstream accuracies of one model (METHOD.md step 7).

Perplexity: the first `perplexity_tokens` tokens of the held-out rows of `evaluation.perplexity_data`,
scored with a sliding window of `seq_len` and stride seq_len/2 (moe2dense_core.evaluate.perplexity).
Downstream (when `evaluation.downstream` is set): the core's EvalConfig through lm-eval with the
model in memory (local jsonl tasks offline, hub task names online). The JSON document (kind
`eval`) is published once (small: also browsable on the MLflow run); the numbers ride in the result.
Cached on checkpoint digest + content digests of the held-out text and local task files + the rest of
the evaluation config (`evaluate_parts`).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from moe2dense_core.distill import tokens_digest
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.evaluate import evaluate_downstream, perplexity
from moe2dense_core.io.digests import file_sha256
from moe2dense_core.pretrained import load_causal_lm, load_tokenizer
from moe2dense_platform.caching import without
from moe2dense_platform.corpus import corpus_digest, token_rows
from moe2dense_platform.recipe import EvaluationConfig
from moe2dense_platform.runtime import Runtime, log_token_input
from moe2dense_platform.tracking import TAG_CHECKPOINT_DIGEST
from tasks.publish import finish, publish_text, record_inputs
from tasks.results import EvalTarget, EvaluationResult
from tasks.stage import stage

EVAL_SCHEMA_VERSION = 1


def evaluate_parts(p: dict[str, Any]) -> list[Any]:
    """Checkpoint digest, corpus digest of `evaluation.perplexity_data`, the rest of `evaluation`, with
    each local downstream task file replaced by its sha256."""
    evaluation = p["evaluation"]
    downstream = None
    if evaluation.downstream is not None:
        downstream = without(evaluation.downstream, "tasks")
        downstream["tasks"] = [
            {
                **without(task, "data_file", "fewshot_file"),
                "data_file": task.data_file and file_sha256(task.data_file),
                "fewshot_file": task.fewshot_file and file_sha256(task.fewshot_file),
            }
            for task in evaluation.downstream.tasks
        ]
    return [
        p["checkpoint"].checkpoint_digest,
        corpus_digest(evaluation.perplexity_data),
        without(evaluation, "perplexity_data", "downstream"),
        downstream,
    ]


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


@stage("evaluate", result=EvaluationResult, key=evaluate_parts,
       lineage={TAG_CHECKPOINT_DIGEST: "checkpoint_digest"})
def evaluate_task(
    checkpoint: EvalTarget, evaluation: EvaluationConfig, parent_run_id: str
) -> EvaluationResult:
    runtime = Runtime.from_environment()
    location = checkpoint.location
    model_dir = runtime.fetch_uri(location) if "://" in location else location
    with runtime.stage(parent_run_id, f"evaluate-{checkpoint.label}", {"evaluation": evaluation}) as run:
        if "://" in location:
            record_inputs(run, runtime, checkpoint=location)
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
        eval_uri = publish_text(runtime, run, text, kind="eval", name=f"eval_{checkpoint.label}.json")
        accuracies = {name: summary.get("acc") for name, summary in numbers["downstream"].items()}
        known = [acc for acc in accuracies.values() if acc is not None]
        mean = sum(known) / len(known) if known else None
        metrics = {"eval/perplexity": numbers["perplexity"]["value"]}
        metrics.update({f"eval/{name}/acc": acc for name, acc in accuracies.items() if acc is not None})
        if mean is not None:
            metrics["eval/mean_acc"] = mean
        run.log_metrics(metrics)
        result = EvaluationResult(
            label=checkpoint.label,
            checkpoint_digest=checkpoint.checkpoint_digest,
            perplexity=numbers["perplexity"]["value"],
            downstream_mean_acc=mean,
            downstream=accuracies,
            eval_uri=eval_uri,
            mlflow_run_id=run.run_id,
        )
        finish(run, "evaluate", result)
        return result
