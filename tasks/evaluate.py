"""Stage `evaluate`: held-out perplexity and downstream accuracies of one model (METHOD.md step 7).

Perplexity: the first `perplexity_tokens` tokens of the held-out rows of `evaluation.perplexity_data`,
scored with a sliding window of `seq_len` and stride seq_len/2 (moe2dense_core.evaluate.perplexity).
Downstream (when `evaluation.downstream` is set): the core's EvalConfig through lm-eval with the
model in memory (local jsonl tasks offline, hub task names online). KL to a teacher (when `teacher` is
given, e.g. by flows/compare.py): KL(teacher ‖ model) per token on the same windows as the perplexity
(moe2dense_core.evaluate.teacher_student_kl). The JSON document (kind
`eval`) is published once (small: also browsable on the MLflow run); the numbers ride in the result.
Cached on checkpoint digest + content digests of the held-out text and local task files + the rest of
the evaluation config + the teacher's digest when given (`evaluate_parts`).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from moe2dense_core.distill import tokens_digest
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.evaluate import evaluate_downstream, perplexity, teacher_student_kl
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
    each local downstream task file replaced by its sha256, and the KL teacher's digest (None: no KL)."""
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
        p.get("teacher") and p["teacher"].checkpoint_digest,
    ]


def evaluate_model(
    model: Any, tokenizer: Any, evaluation: EvaluationConfig, teacher: Any = None
) -> dict[str, Any]:
    """{"perplexity": {...}, "heldout_digest", "downstream": {task: summary}} for an in-memory model, and
    "kl_to_teacher": {...} when an in-memory `teacher` is given (same stream, windows and stride)."""
    rows = token_rows(evaluation.perplexity_data, tokenizer, evaluation.seq_len, "heldout")
    stream = rows.reshape(-1)[: evaluation.perplexity_tokens]
    windows = {"window": evaluation.seq_len, "stride": max(1, evaluation.seq_len // 2)}
    ppl = perplexity(model, stream, **windows, batch_size=evaluation.batch_size)
    kl = {}
    if teacher is not None:
        result = teacher_student_kl(model, teacher, stream, **windows, batch_size=evaluation.batch_size)
        kl = {"kl_to_teacher": {"mean_kl": result.mean_kl, "tokens": result.num_scored_tokens, **windows}}
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
        **kl,
    }


def local_folder(runtime: Runtime, location: str) -> str:
    """A target's model folder: a stored URI fetched (verified, cached), a local folder as is."""
    return str(runtime.fetch_uri(location)) if "://" in location else location


@stage(
    "evaluate",
    result=EvaluationResult,
    key=evaluate_parts,
    lineage={TAG_CHECKPOINT_DIGEST: "checkpoint_digest"},
)
def evaluate_task(
    checkpoint: EvalTarget,
    evaluation: EvaluationConfig,
    parent_run_id: str,
    teacher: EvalTarget | None = None,
) -> EvaluationResult:
    runtime = Runtime.from_environment()
    location = checkpoint.location
    model_dir = local_folder(runtime, location)
    with runtime.stage(parent_run_id, f"evaluate-{checkpoint.label}", {"evaluation": evaluation}) as run:
        if "://" in location:
            record_inputs(run, runtime, checkpoint=location)
        dtype = load_dtype(torch.device("cpu"))
        model = load_causal_lm(model_dir, dtype=dtype)
        tokenizer = load_tokenizer(model_dir)
        kl_reference = None
        if teacher is not None:
            kl_reference = load_causal_lm(local_folder(runtime, teacher.location), dtype=dtype)
        numbers = evaluate_model(model, tokenizer, evaluation, kl_reference)
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
        kl_to_teacher = numbers.get("kl_to_teacher", {}).get("mean_kl")
        if kl_to_teacher is not None:
            metrics["eval/kl_to_teacher"] = kl_to_teacher
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
            kl_to_teacher=kl_to_teacher,
        )
        finish(run, "evaluate", result)
        return result
