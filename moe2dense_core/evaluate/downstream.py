"""Downstream accuracy through lm-eval, with the model in memory (no server, no re-loading).

    evaluate_downstream(model, tokenizer, EvalConfig) -> {"tasks": {...}, "mean": {...}, ...}

Local tasks are validated (every row) before anything runs, then written as YAMLs into a
temporary folder (see lm_eval_tasks.py) together with a temporary `datasets` cache, each with its
own few-shot count; hub tasks come from lm-eval's registry and need the model hub. lm-eval runs
once for all local tasks and once per distinct few-shot count of the hub tasks (its `num_fewshot`
argument applies to every leaf task of a call, groups such as MMLU included).

Per task: acc and acc_norm with their standard errors (acc_norm is None where the format has
no length normalisation: partial_context, cloze), perplexity for cloze tasks, the task version,
shots and number of examples scored. `mean` is unweighted over tasks [paper: unweighted mean]:
  acc       mean of acc
  acc_norm  mean of acc_norm, taking acc for tasks without acc_norm [defined here], so both
            means cover the same tasks.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate.config import EvalConfig, TaskSpec
from moe2dense_core.evaluate.lm_eval_tasks import registered_name, validate_local_task, write_task_yamls
from moe2dense_core.evaluate.model_io import eval_mode
from moe2dense_core.io.digests import file_sha256

_METRICS = ("acc", "acc_norm", "perplexity")


def evaluate_downstream(model: Any, tokenizer: Any, config: EvalConfig) -> dict[str, Any]:
    """Run config.tasks on an in-memory Hugging Face causal LM; return per-task metrics and means.

    model: a transformers PreTrainedModel (evaluated on its own device, training mode restored);
    tokenizer: its tokenizer.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise Moe2DenseError(
            f"evaluate_downstream: model must be a transformers PreTrainedModel, got {type(model).__name__}"
        )
    rows = {spec.name: validate_local_task(spec) for spec in config.tasks if spec.is_local}

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    calls: dict[int | None, list[TaskSpec]] = defaultdict(list)  # None: local tasks, shots set in their YAML
    for spec in config.tasks:
        calls[None if spec.is_local else spec.num_fewshot].append(spec)

    tasks: dict[str, dict[str, Any]] = {}
    any_local, all_local = None in calls, len(calls) == 1 and None in calls
    with (
        tempfile.TemporaryDirectory(prefix="moe2dense_lm_eval_") as tmp,
        eval_mode(model),
        _global_rng_preserved(),
    ):
        include = Path(tmp) / "tasks"
        write_task_yamls(config.tasks, include, datasets_cache=Path(tmp) / "datasets")
        manager = TaskManager(
            include_path=str(include) if any_local else None, include_defaults=not all_local
        )
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, max_length=config.max_length
        )
        for shots, specs in calls.items():
            output = simple_evaluate(
                model=lm,
                tasks=[registered_name(s) for s in specs],
                num_fewshot=shots,
                limit=config.limit,
                bootstrap_iters=config.bootstrap_iters,
                task_manager=manager,
                log_samples=False,
                random_seed=config.random_seed,
                numpy_random_seed=config.numpy_seed,
                torch_random_seed=config.torch_seed,
                fewshot_random_seed=config.fewshot_seed,
            )
            if output is None:
                raise Moe2DenseError(
                    "lm-eval returned no results (is this a non-zero rank of a distributed run?)"
                )
            for spec in specs:
                tasks[spec.name] = _task_summary(spec, output, rows.get(spec.name))

    return {
        "lm_eval_version": version("lm_eval"),
        "model_class": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "tasks": tasks,
        "mean": unweighted_means(tasks),
    }


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """lm-eval seeds Python's, NumPy's and torch's global generators; give the caller theirs back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def unweighted_means(tasks: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """{"acc": mean acc, "acc_norm": mean of acc_norm-or-acc} over the tasks (None when there are none)."""
    if not tasks:
        return {"acc": None, "acc_norm": None}
    accs = [t["acc"] for t in tasks.values()]
    norms = [t["acc_norm"] if t["acc_norm"] is not None else t["acc"] for t in tasks.values()]
    return {"acc": sum(accs) / len(accs), "acc_norm": sum(norms) / len(norms)}


def _task_summary(spec: TaskSpec, output: dict[str, Any], num_rows: int | None) -> dict[str, Any]:
    name = registered_name(spec)
    metrics = output["results"].get(name) or output.get("groups", {}).get(name)
    if metrics is None or metrics.get("acc,none") is None:
        raise Moe2DenseError(f"lm-eval reported no acc for task {spec.name!r} (registered as {name!r})")
    shots = output["n-shot"].get(name, spec.num_fewshot)
    if shots != spec.num_fewshot:
        raise Moe2DenseError(
            f"task {spec.name!r}: asked for {spec.num_fewshot} shots, lm-eval ran {shots} (its task config pins it)"
        )
    summary: dict[str, Any] = {
        "source": "local" if spec.is_local else "hub",
        "format": spec.format,
        "version": output["versions"].get(name),
        "num_fewshot": shots,
        "num_examples": _num_examples(output, name),
    }
    for metric in _METRICS:
        summary[metric] = _number(metrics.get(f"{metric},none"))
        summary[f"{metric}_stderr"] = _number(metrics.get(f"{metric}_stderr,none"))
    if spec.is_local:
        summary["data_file"] = str(spec.data_file)
        summary["data_rows"] = num_rows
        summary["data_sha256"] = file_sha256(Path(spec.data_file))
        if spec.fewshot_file is not None:
            summary["fewshot_file"] = str(spec.fewshot_file)
            summary["fewshot_sha256"] = file_sha256(Path(spec.fewshot_file))
    return summary


def _num_examples(output: dict[str, Any], name: str) -> int | None:
    """Examples scored: the task's effective count, or the sum over a group's subtasks."""
    samples = output.get("n-samples", {})
    if name in samples:
        return int(samples[name]["effective"])
    subtasks = output.get("group_subtasks", {}).get(name)
    if subtasks:
        return sum(_num_examples(output, sub) or 0 for sub in subtasks)
    return None


def _number(value: Any) -> float | None:
    """Finite numbers as float; lm-eval's "N/A" (missing standard error) and inf / nan become None (valid JSON)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
