"""tasks/teacher.py: a tiny real training run through the Prefect task's function, saved as a loadable
checkpoint with its record, reused on the same request, its steps reported as progress. (The library
part, moe2dense_core.teacher, is tested in tests/core/test_teacher.py.)"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe2dense_core.teacher import TeacherModelConfig
from moe2dense_platform.corpus import CorpusSpec, write_corpus
from moe2dense_platform.progress import PROGRESS_LOGGER
from tasks.teacher import TEACHER_RECORD, train_or_reuse_teacher, train_teacher_task
from tests.flows.tiny_teacher import TINY_TEACHER, animal_paragraphs

TINY = TeacherModelConfig(**{**TINY_TEACHER, "seq_len": 16, "steps": 40})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "text.txt").write_text("\n\n".join(animal_paragraphs(600)))
    return write_corpus(
        CorpusSpec(source="files", paths=(root / "text.txt",), heldout_fraction=0.3), root / "out"
    )


class Steps(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.stage, record.step, record.total))


def test_trains_saves_a_loadable_checkpoint_and_reuses_it(corpus, tmp_path):
    torch.set_num_threads(1)
    steps = Steps()
    PROGRESS_LOGGER.addHandler(steps)
    try:
        result = train_teacher_task.fn(corpus, TINY, str(tmp_path))
    finally:
        PROGRESS_LOGGER.removeHandler(steps)
    assert steps.seen == [("teacher-moe", s, TINY.steps) for s in range(1, TINY.steps + 1)]
    assert not result.reused
    assert result.heldout_perplexity < 0.5 * TINY.vocab_size  # far below a uniform guess: it learned
    record = json.loads((tmp_path / result.path.split("/")[-1] / TEACHER_RECORD).read_text())
    assert record["key"] == result.key and record["corpus_digest"] == corpus.digest
    assert record["training"]["precision"] in ("bf16", "fp32")
    model = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 4
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = tokenizer("The cat sat", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
    assert (torch.tensor(model.config.num_experts_per_tok) == 2).all()
    again = train_or_reuse_teacher(corpus, TINY, tmp_path, on_step=lambda *_: pytest.fail("trained again"))
    assert again.reused and again.path == result.path and again.key == result.key
