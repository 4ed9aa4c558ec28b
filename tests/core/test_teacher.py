"""moe2dense_core.teacher: balance loss by hand, tokenizer round trip, equal-size dense teacher,
refusals, the library's warmup-cosine schedule, and a tiny real training run."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.distill.schedule import WarmupCosine
from moe2dense_core.errors import TeacherError
from moe2dense_core.teacher import (
    TeacherModelConfig,
    build_teacher,
    encode_documents,
    layer_balance_loss,
    train_bpe_tokenizer,
    train_teacher,
    train_teacher_model,
)
from tests.flows.tiny_teacher import TINY_TEACHER, animal_paragraphs

TINY = TeacherModelConfig(**{**TINY_TEACHER, "seq_len": 16, "steps": 40, "precision": "fp32"})
DOCUMENTS = animal_paragraphs(400)


class LrLogger:
    def __init__(self) -> None:
        self.lr: dict[int, float] = {}
        self.heldout: float | None = None

    def log_params(self, params) -> None:
        return None

    def log_metrics(self, metrics, step=None) -> None:
        if "teacher/lr" in metrics:
            self.lr[step] = metrics["teacher/lr"]
        self.heldout = metrics.get("teacher/heldout_perplexity", self.heldout)

    def log_artifact(self, path, artifact_path=None) -> None:
        return None


def test_balance_loss_matches_hand_numbers():
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both tokens → expert 0
    # f = [1, 0], P_0 = e/(1+e) → B = 2·e/(1+e)
    assert layer_balance_loss([collapsed], top_k=1).item() == pytest.approx(
        2 * math.e / (1 + math.e), rel=1e-6
    )
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # f = P = [½, ½] → B = 1
    assert layer_balance_loss([balanced], top_k=1).item() == pytest.approx(1.0)
    # the mean over layers, each balanced on its own
    assert layer_balance_loss([collapsed, balanced], top_k=1).item() == pytest.approx(
        (2 * math.e / (1 + math.e) + 1) / 2
    )


def test_tokenizer_round_trips_any_text():
    tokenizer = train_bpe_tokenizer(DOCUMENTS, 300)
    text = "The cat sat — ünïcödé & émoji 🐱 are bytes too."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer) == 300
    stream = encode_documents(tokenizer, ["a cat", "a dog"])
    assert stream.dtype == torch.long and (stream == 0).sum() == 2  # one <|endoftext|> after each


def test_dense_teacher_has_the_moe_teachers_size_up_to_the_routers():
    moe = build_teacher(TINY, 300)
    dense = build_teacher(TINY.model_copy(update={"kind": "dense"}), 300)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(moe) - count(dense) == TINY.num_layers * TINY.num_experts * TINY.hidden_size


def test_bad_teacher_requests_name_the_field():
    with pytest.raises(ValueError, match="top_k"):
        TeacherModelConfig(num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="num_kv_heads"):
        TeacherModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="precision"):
        TeacherModelConfig(precision="fp16")
    with pytest.raises(TeacherError, match="held-out stream has 5 tokens"):
        train_teacher_model(build_teacher(TINY, 300), torch.arange(100), torch.arange(5), TINY)
    with pytest.raises(TeacherError, match="0 held-out documents"):
        train_teacher(DOCUMENTS, [], TINY)


def test_trains_with_the_library_schedule_and_learns():
    logger = LrLogger()
    config = TINY.model_copy(update={"steps": 30, "warmup_steps": 4, "lr": 1e-2})
    trained = train_teacher(DOCUMENTS[:300], DOCUMENTS[300:], config, logger=logger)
    schedule = WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    assert logger.lr == pytest.approx({s: config.lr * schedule(s) for s in logger.lr})
    assert sorted(logger.lr) == [0, 25, 29]
    summary = trained.summary
    assert summary.precision == "fp32" and summary.tokens_trained == 30 * config.batch_size * config.seq_len
    assert summary.heldout_perplexity == logger.heldout < 0.5 * len(trained.tokenizer)  # it learned
    assert {p.dtype for p in trained.model.parameters()} == {torch.float32}
