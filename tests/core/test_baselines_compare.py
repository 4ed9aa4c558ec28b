"""compare_students: one distillation config, data and token budget for every student, recorded as such;
unequal parameter counts or token budgets are refused before any training step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe2dense_core import convert
from moe2dense_core.baselines import (
    StudentEntry,
    compare_students,
    count_parameters,
    random_ffn_student,
    random_init_student,
)
from moe2dense_core.distill import DistillConfig, tokens_digest
from moe2dense_core.errors import BudgetMismatchError, Moe2DenseError
from moe2dense_core.evaluate import EvalConfig, TaskSpec
from tests.core._eval_helpers import one_torch_thread
from tests.fixtures.tiny_moe import VOCAB_SIZE, build_tiny_moe

SEQ_LEN = 16
CONFIG = DistillConfig(max_steps=3, micro_batch_size=4, lr=1e-3, precision="fp32")
BUDGET_TOKENS = 3 * 4 * SEQ_LEN  # max_steps · micro_batch_size · L


class RecordingLogger:
    """Keeps everything the comparison logs."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[int | None, dict[str, float]]] = []
        self.artifacts: list[Path] = []

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, metrics))

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append(Path(path))


def token_rows(num_rows: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (num_rows, SEQ_LEN), generator=torch.Generator().manual_seed(seed))


def random_ffn(tiny: dict) -> torch.nn.Module:
    """The converted student's architecture with a random FFN and the teacher's other weights."""
    return random_ffn_student(tiny["teacher_dir"], tiny["converted_dir"])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Qwen3-MoE teacher (8 experts of width 32, top-2), its conversion, and train / held-out rows."""
    root = tmp_path_factory.mktemp("compare")
    teacher_dir = build_tiny_moe("qwen3_moe", root / "teacher")
    converted_dir = root / "converted"
    convert(teacher_dir, [token_rows(4, seed=9)], converted_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    return {
        "teacher_dir": teacher_dir,
        "converted_dir": converted_dir,
        "teacher": teacher,
        "train": token_rows(16, seed=1),
        "heldout": token_rows(4, seed=2),
    }


def test_every_student_gets_the_same_budget_and_is_recorded_with_its_kind(tiny: dict, tmp_path: Path) -> None:
    students = {
        "converted": StudentEntry(tiny["converted_dir"], "converted"),
        # the same checkpoint again: identical students must end identical if data, order and seed agree
        "converted_again": StudentEntry(tiny["converted_dir"], "converted"),
        "random_ffn": StudentEntry(random_ffn(tiny), "random_ffn"),
    }
    logger = RecordingLogger()
    result = compare_students(
        students,
        tiny["teacher"],
        tiny["train"],
        tiny["heldout"],
        CONFIG,
        out_dir=tmp_path / "cmp",
        logger=logger,
    )

    document = json.loads(result.path.read_text())
    assert document == result.document and result.path == tmp_path / "cmp" / "comparison.json"
    assert logger.artifacts == [result.path]
    assert DistillConfig(**document["distill_config"]) == CONFIG
    assert document["data"]["train"] == {
        "sha256": tokens_digest(tiny["train"]),
        "rows": 16,
        "seq_len": SEQ_LEN,
        "tokens": 16 * SEQ_LEN,
    }
    assert document["data"]["heldout"]["sha256"] == tokens_digest(tiny["heldout"])
    assert document["heldout_eval"] == {"window": SEQ_LEN, "stride": SEQ_LEN}
    assert document["budget_check"]["equal"] is True

    converted_params = count_parameters(AutoModelForCausalLM.from_pretrained(tiny["converted_dir"]))
    records = document["students"]
    assert {name: r["kind"] for name, r in records.items()} == {
        "converted": "converted",
        "converted_again": "converted",
        "random_ffn": "random_ffn",
    }
    for name, record in records.items():
        assert record["num_params"] == converted_params, name
        assert record["token_budget"] == {
            "prior_train_tokens": 0,
            "distill_tokens": BUDGET_TOKENS,
            "total": BUDGET_TOKENS,
        }, name
        assert record["distill"]["steps"] == 3 and record["distill"]["tokens_seen"] == BUDGET_TOKENS, name
        assert (tmp_path / "cmp" / record["distill"]["checkpoint"]).is_dir(), name
        assert math.isfinite(record["perplexity"]["perplexity"]) and record["perplexity"]["perplexity"] > 1
        assert math.isfinite(record["kl_to_teacher"]["mean_kl"]) and record["kl_to_teacher"]["mean_kl"] > 0
        assert all(math.isfinite(v) for v in record["distill"]["final_metrics"].values()), name

    def trajectory(name: str) -> list[dict[str, float]]:  # per-step metrics without the timing
        return [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in result.runs[name].history]

    assert trajectory("converted") == trajectory("converted_again") != trajectory("random_ffn")
    assert records["converted"]["kl_to_teacher"] == records["converted_again"]["kl_to_teacher"]
    assert records["random_ffn"]["kl_to_teacher"] != records["converted"]["kl_to_teacher"]
    assert math.isfinite(document["teacher"]["perplexity"]["perplexity"])

    steps_per_student = {name: [s for s, m in logger.metrics if f"{name}.kl" in m] for name in students}
    assert steps_per_student == {name: [1, 2, 3] for name in students}
    assert logger.params["random_ffn.distill.max_steps"] == 3


@pytest.mark.parametrize("mismatch", ["ffn_width", "token_budget"])
def test_unequal_budgets_are_refused_before_any_training_step(
    tiny: dict, tmp_path: Path, mismatch: str
) -> None:
    baseline = random_ffn(tiny)
    prior_tokens = 0
    if mismatch == "ffn_width":
        config = AutoModelForCausalLM.from_pretrained(tiny["converted_dir"]).config
        config.intermediate_size //= 2
        baseline = random_init_student(config)
    else:
        prior_tokens = SEQ_LEN  # one row of extra training before the comparison
    before = [p.detach().clone() for p in baseline.parameters()]
    students = {
        "converted": StudentEntry(tiny["converted_dir"], "converted"),
        "baseline": StudentEntry(baseline, "random_ffn", prior_train_tokens=prior_tokens),
    }
    logger = RecordingLogger()
    expected = "parameter counts differ" if mismatch == "ffn_width" else "token budgets differ"
    with pytest.raises(BudgetMismatchError, match=expected):
        compare_students(
            students,
            tiny["teacher"],
            tiny["train"],
            tiny["heldout"],
            CONFIG,
            out_dir=tmp_path / "cmp",
            logger=logger,
        )
    assert logger.params == {} and logger.metrics == [] and logger.artifacts == []
    assert not (tmp_path / "cmp").exists()
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.parameters(), strict=True))


def test_downstream_accuracy_is_recorded_for_the_teacher_and_every_student(
    tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    rows = [
        {"query": "The sky is", "choices": [" blue", " loud"], "gold": 0},
        {"query": "Two and two make", "choices": [" four", " green"], "gold": 0},
        {"query": "Fish live in", "choices": [" trees", " water"], "gold": 1},
    ]
    data_file = tmp_path / "tiny_mc.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_config = EvalConfig(
        tasks=(TaskSpec(name="tiny_mc", format="multiple_choice", data_file=data_file),),
        batch_size=4,
        max_length=64,
    )
    students = {
        "converted": StudentEntry(tiny["converted_dir"], "converted"),
        "random_ffn": StudentEntry(random_ffn(tiny), "random_ffn"),
    }
    result = compare_students(
        students,
        tiny["teacher"],
        tiny["train"],
        tiny["heldout"],
        CONFIG,
        out_dir=tmp_path / "cmp",
        eval_config=eval_config,
        tokenizer=AutoTokenizer.from_pretrained(tiny["teacher_dir"]),
    )

    document = result.document
    assert EvalConfig(**document["eval_config"]) == eval_config
    for entry in [document["teacher"], *document["students"].values()]:
        task = entry["downstream"]["tasks"]["tiny_mc"]
        assert 0.0 <= task["acc"] <= 1.0 and math.isfinite(task["acc_stderr"])
        assert entry["downstream"]["mean"]["acc"] == task["acc"]


def test_downstream_evaluation_without_a_tokenizer_is_refused_before_training(
    tiny: dict, tmp_path: Path
) -> None:
    students = {
        "a": StudentEntry(tiny["converted_dir"], "converted"),
        "b": StudentEntry(tiny["converted_dir"], "converted"),
    }
    logger = RecordingLogger()
    with pytest.raises(Moe2DenseError, match="needs the tokenizer"):
        compare_students(
            students,
            tiny["teacher"],
            tiny["train"],
            tiny["heldout"],
            CONFIG,
            out_dir=tmp_path / "cmp",
            eval_config=EvalConfig(),
            logger=logger,
        )
    assert logger.metrics == [] and not (tmp_path / "cmp").exists()
