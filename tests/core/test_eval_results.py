"""The evaluation document: held-out numbers attach to the right model; JSON is valid and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate import EvalConfig, KLResult, PerplexityResult, eval_document, write_eval_document
from moe2dense_core.evaluate.downstream import unweighted_means


def _downstream(acc: float) -> dict:
    task = {"acc": acc, "acc_norm": None, "acc_stderr": 0.1, "acc_norm_stderr": None}
    return {"lm_eval_version": "0.4.13", "tasks": {"copa": task}, "mean": unweighted_means({"copa": task})}


def test_perplexity_and_kl_attach_to_their_models(tmp_path: Path) -> None:
    document = eval_document(
        EvalConfig(limit=3),
        {"student": _downstream(0.5), "teacher": _downstream(0.75)},
        perplexity={
            "student": PerplexityResult(9.0, 2.197, 100, 256, 128),
            "teacher": PerplexityResult(5.4, 1.69, 100, 256, 128),
        },
        kl_to_teacher={"student": KLResult(0.31, 100, 256, 128)},
    )
    assert document["models"]["student"]["kl_to_teacher"]["mean_kl"] == 0.31
    assert "kl_to_teacher" not in document["models"]["teacher"]
    assert document["models"]["teacher"]["perplexity"]["perplexity"] == 5.4
    assert document["models"]["teacher"]["mean"] == {"acc": 0.75, "acc_norm": 0.75}
    assert document["config"]["limit"] == 3 and document["lm_eval_version"] == "0.4.13"
    path = write_eval_document(document, tmp_path / "results.json")
    assert json.loads(path.read_text()) == document


def test_numbers_for_an_unknown_model_are_refused() -> None:
    with pytest.raises(Moe2DenseError, match="perplexity given for 'studnet'"):
        eval_document(
            EvalConfig(),
            {"student": _downstream(0.5)},
            perplexity={"studnet": PerplexityResult(1, 0, 1, 2, 1)},
        )


def test_non_finite_numbers_are_not_written_as_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_eval_document({"x": float("inf")}, tmp_path / "bad.json")
    assert not any(tmp_path.iterdir()), "a failed write leaves nothing behind"
