"""The evaluation document: one JSON file with everything needed to trust and reproduce the numbers.

    {
      "schema_version": 1,
      "lm_eval_version": "0.4.13",
      "config": EvalConfig (tasks with shots and files, limit, the four seeds, bootstrap_iters, ...),
      "models": {"student": evaluate_downstream(...) + optional "perplexity" / "kl_to_teacher",
                 "teacher": ...}
    }

Each model entry holds per-task acc / acc_norm with standard errors, task versions, shots,
examples scored and data-file sha256, plus the unweighted means (see downstream.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate.config import EvalConfig
from moe2dense_core.evaluate.downstream import evaluate_downstream
from moe2dense_core.evaluate.kl import KLResult
from moe2dense_core.evaluate.perplexity import PerplexityResult
from moe2dense_core.io.atomic import atomic_write_text

EVAL_SCHEMA_VERSION = 1

__all__ = ["EVAL_SCHEMA_VERSION", "EvalConfig", "eval_document", "evaluate_models", "write_eval_document"]


def evaluate_models(models: Mapping[str, tuple[Any, Any]], config: EvalConfig) -> dict[str, Any]:
    """Downstream-evaluate several models with one config: {"student": (model, tokenizer), "teacher": ...}.

    Returns the evaluation document (see module docstring), without perplexity / KL entries.
    """
    if not models:
        raise Moe2DenseError("evaluate_models: no models given")
    return eval_document(
        config, {label: evaluate_downstream(m, tok, config) for label, (m, tok) in models.items()}
    )


def eval_document(
    config: EvalConfig,
    downstream: Mapping[str, dict[str, Any]],
    *,
    perplexity: Mapping[str, PerplexityResult] | None = None,
    kl_to_teacher: Mapping[str, KLResult] | None = None,
) -> dict[str, Any]:
    """Assemble the document from per-model downstream results and optional held-out numbers.

    perplexity / kl_to_teacher: keyed by the same model labels as downstream (a label may be
    absent, e.g. no KL for the teacher itself); an unknown label is refused.
    """
    entries: dict[str, dict[str, Any]] = {label: dict(result) for label, result in downstream.items()}
    for field, values in (("perplexity", perplexity or {}), ("kl_to_teacher", kl_to_teacher or {})):
        for label, value in values.items():
            if label not in entries:
                raise Moe2DenseError(
                    f"eval_document: {field} given for {label!r}, which has no downstream results"
                )
            entries[label][field] = asdict(value)
    versions = {r.get("lm_eval_version") for r in entries.values()} - {None}
    return {
        "schema_version": EVAL_SCHEMA_VERSION,
        "lm_eval_version": versions.pop() if len(versions) == 1 else sorted(versions),
        "config": config.model_dump(mode="json"),
        "models": entries,
    }


def write_eval_document(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write the document as indented JSON, atomically (temp file in the same folder, then os.replace)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, sort_keys=False, allow_nan=False)
    atomic_write_text(target, text + "\n")
    return target
