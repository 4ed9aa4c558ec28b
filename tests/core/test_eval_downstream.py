"""lm-eval on the eight shared eval sets with the real tiny1m, offline, a handful of examples each."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from moe2dense_core.evaluate import (
    SHARED_EVAL_FORMATS,
    EvalConfig,
    evaluate_models,
    shared_eval_tasks,
    write_eval_document,
)
from tests.core._eval_helpers import load_tiny1m, one_torch_thread, tiny1m_dir


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


LIMIT = 5
SHOTS = {"winogrande": 2, "arc_easy": 2, "copa": 1}
PIQA_SHA256 = "d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0"


@pytest.fixture(scope="module")
def run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(config, document, teacher, tokenizer): teacher = tiny1m, student = tiny1m with a damaged FFN."""
    pytest.importorskip("lm_eval")
    teacher, tokenizer = load_tiny1m(tiny1m_dir(shared_data))
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer in student.model.layers:
            layer.mlp.down_proj.weight.mul_(0.3)
    config = EvalConfig(
        tasks=shared_eval_tasks(shared_data / "eval", num_fewshot=SHOTS),
        limit=LIMIT,
        batch_size=8,
        max_length=128,
        bootstrap_iters=200,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        torch.manual_seed(77)
        document = evaluate_models({"student": (student, tokenizer), "teacher": (teacher, tokenizer)}, config)
        after = torch.rand(4)
    torch.manual_seed(77)
    assert torch.equal(after, torch.rand(4)), "lm-eval's seeding must not leak into the caller's torch RNG"
    return config, document, teacher, tokenizer


def test_every_shared_set_reports_acc_with_standard_errors(run) -> None:
    _, document, _, _ = run
    for label in ("student", "teacher"):
        tasks = document["models"][label]["tasks"]
        assert sorted(tasks) == sorted(SHARED_EVAL_FORMATS)
        for name, task in tasks.items():
            assert task["num_examples"] == LIMIT
            assert task["num_fewshot"] == SHOTS.get(name, 0)
            assert task["version"] == 1.0
            acc = task["acc"]
            assert acc in {i / LIMIT for i in range(LIMIT + 1)}
            assert task["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / (LIMIT - 1)))
            if SHARED_EVAL_FORMATS[name] == "multiple_choice":
                assert task["acc_norm"] in {i / LIMIT for i in range(LIMIT + 1)}
                assert task["acc_norm_stderr"] is not None
            else:
                assert task["acc_norm"] is None
        assert tasks["lambada_openai"]["perplexity"] > 1.0
        assert tasks["piqa"]["data_sha256"] == PIQA_SHA256


def test_means_are_unweighted_over_tasks(run) -> None:
    _, document, _, _ = run
    entry = document["models"]["teacher"]
    tasks = entry["tasks"].values()
    assert entry["mean"]["acc"] == pytest.approx(sum(t["acc"] for t in tasks) / 8)
    norm_or_acc = [t["acc_norm"] if t["acc_norm"] is not None else t["acc"] for t in tasks]
    assert entry["mean"]["acc_norm"] == pytest.approx(sum(norm_or_acc) / 8)


def test_document_records_versions_shots_seeds_and_limits(run, tmp_path: Path) -> None:
    config, document, _, _ = run
    path = write_eval_document(document, tmp_path / "eval" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(document))
    assert loaded["schema_version"] == 1
    assert loaded["lm_eval_version"] == "0.4.13"
    assert EvalConfig.model_validate(loaded["config"]) == config
    assert loaded["config"]["limit"] == LIMIT
    assert {k: loaded["config"][k] for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")} == {
        "random_seed": 0,
        "numpy_seed": 1234,
        "torch_seed": 1234,
        "fewshot_seed": 1234,
    }
    assert loaded["models"]["teacher"]["num_parameters"] == 935040
    assert [p.name for p in path.parent.iterdir()] == ["results.json"], "no temporary files left behind"


def test_piqa_accuracy_matches_hand_scored_loglikelihoods(run, shared_data: Path) -> None:
    """Score the first LIMIT piqa rows independently: argmax over Σ log p(choice tokens | query)."""
    _, document, model, tokenizer = run
    rows = [
        json.loads(line) for line in (shared_data / "eval" / "piqa.jsonl").read_text().splitlines()[:LIMIT]
    ]
    correct = 0
    correct_norm = 0
    for row in rows:
        context_ids = tokenizer(row["query"]).input_ids
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(row["query"] + " " + choice).input_ids
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
            n = len(context_ids)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(n, len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["gold"])
        normed = [s / len(" " + c) for s, c in zip(scores, row["choices"], strict=True)]
        correct_norm += int(max(range(len(normed)), key=normed.__getitem__) == row["gold"])
    piqa = document["models"]["teacher"]["tasks"]["piqa"]
    assert piqa["acc"] == correct / LIMIT
    assert piqa["acc_norm"] == correct_norm / LIMIT


def test_a_damaged_student_is_scored_separately(run) -> None:
    _, document, _, _ = run
    student, teacher = document["models"]["student"], document["models"]["teacher"]
    assert (
        student["tasks"]["lambada_openai"]["perplexity"] != teacher["tasks"]["lambada_openai"]["perplexity"]
    )
