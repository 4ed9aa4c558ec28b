"""tasks/teacher_training.py + tasks/teacher.py: tokenizer, per-layer balance, a tiny real training run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.corpus import CorpusSpec, write_corpus
from tasks.teacher import TEACHER_RECORD, train_or_reuse_teacher, train_teacher_task
from tasks.teacher_training import (
    TeacherModelConfig,
    build_teacher,
    layer_balance_loss,
    learning_rate,
    train_bpe_tokenizer,
)
from tests.flows.tiny_teacher import TINY_TEACHER, animal_paragraphs

TINY = TeacherModelConfig(**{**TINY_TEACHER, "seq_len": 16, "steps": 40})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "text.txt").write_text("\n\n".join(animal_paragraphs(600)))
    return write_corpus(
        CorpusSpec(source="files", paths=(root / "text.txt",), heldout_fraction=0.3), root / "out"
    )


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


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = TINY.model_copy(update={"steps": 105, "warmup_steps": 5, "lr": 1.0})
    assert learning_rate(0, config) == pytest.approx(0.2)
    assert learning_rate(4, config) == pytest.approx(1.0)
    assert learning_rate(5, config) == pytest.approx(1.0)
    assert learning_rate(105, config) == pytest.approx(0.1)


def test_tokenizer_round_trips_any_text(corpus):
    documents = corpus.train.read_text().split("\n\n")
    tokenizer = train_bpe_tokenizer(documents, 300)
    text = "The cat sat — ünïcödé & émoji 🐱 are bytes too."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert len(tokenizer) == 300


def test_dense_teacher_has_the_moe_teachers_size_up_to_the_routers():
    moe = build_teacher(TINY, 300)
    dense = build_teacher(TINY.model_copy(update={"kind": "dense"}), 300)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(moe) - count(dense) == TINY.num_layers * TINY.num_experts * TINY.hidden_size


def test_bad_teacher_configs_name_the_field():
    with pytest.raises(ValueError, match="top_k"):
        TeacherModelConfig(num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="num_kv_heads"):
        TeacherModelConfig(num_heads=4, num_kv_heads=3)


def test_trains_saves_a_loadable_checkpoint_and_reuses_it(corpus, tmp_path):
    torch.set_num_threads(1)
    result = train_teacher_task.fn(corpus, TINY, str(tmp_path))
    assert not result.reused
    assert result.heldout_perplexity < 0.5 * TINY.vocab_size  # far below a uniform guess: it learned
    record = json.loads((tmp_path / result.path.split("/")[-1] / TEACHER_RECORD).read_text())
    assert record["key"] == result.key and record["corpus_digest"] == corpus.digest
    model = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 4
    ids = tokenizer("The cat sat", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
    assert (torch.tensor(model.config.num_experts_per_tok) == 2).all()
    again = train_or_reuse_teacher(corpus, TINY, tmp_path, on_step=lambda *_: pytest.fail("trained again"))
    assert again.reused and again.path == result.path and again.key == result.key
