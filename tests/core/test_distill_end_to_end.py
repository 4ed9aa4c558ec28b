"""Tiny end to end on CPU: train a tiny MoE teacher briefly, convert it (moe2dense_core.convert:
do_acp, prune, uniform), distill 30 steps → held-out perplexity and KL to the teacher both fall."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_core import convert
from moe2dense_core.distill import DistillConfig, distill, prepare_token_splits
from moe2dense_core.evaluate.kl import teacher_student_kl
from moe2dense_core.evaluate.perplexity import perplexity
from tests.core.distill_tiny_models import ByteTokenizer, tiny_teacher

SEQ_LEN = 32


def toy_corpus(num_documents: int = 400, seed: int = 0) -> list[str]:
    """Short documents of grammatical sentences over a small vocabulary: learnable in a few steps."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "finds", "watches", "follows", "calls"]
    objects = ["the ball", "a red apple", "the river", "her house", "the moon", "a green hat"]
    return [
        " ".join(
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            for _ in range(rng.randint(3, 8))
        )
        for _ in range(num_documents)
    ]


def pretrain(model: torch.nn.Module, rows: torch.Tensor, steps: int, lr: float) -> None:
    """Plain next-token training so the teacher knows more than chance (a random teacher teaches nothing)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(0, len(rows), (8,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.slow
def test_convert_then_distill_lowers_heldout_perplexity_and_kl(tmp_path: Path) -> None:
    splits = prepare_token_splits(toy_corpus(), ByteTokenizer(), SEQ_LEN, heldout_fraction=0.1)
    teacher = tiny_teacher(seed=0)
    pretrain(teacher, splits.train, steps=30, lr=6e-3)
    teacher.save_pretrained(tmp_path / "teacher")
    convert(tmp_path / "teacher", [splits.train[:16]], tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")

    heldout = splits.heldout[:96].flatten()

    def measure() -> tuple[float, float]:
        ppl = perplexity(student, heldout, window=SEQ_LEN, stride=SEQ_LEN).perplexity
        kl = teacher_student_kl(student, teacher, heldout, window=SEQ_LEN, stride=SEQ_LEN).mean_kl
        return ppl, kl

    ppl_before, kl_before = measure()
    result = distill(
        student,
        teacher,
        splits.train,
        DistillConfig(max_steps=30, micro_batch_size=8, lr=3e-3, warmup_steps=3, precision="fp32"),
    )
    ppl_after, kl_after = measure()
    teacher_ppl = perplexity(teacher, heldout, window=SEQ_LEN, stride=SEQ_LEN).perplexity
    print(
        f"\nheld-out ppl {ppl_before:.3f} → {ppl_after:.3f} (teacher {teacher_ppl:.3f}); "
        f"KL {kl_before:.4f} → {kl_after:.4f}"
    )

    assert result.steps == 30 and result.history[-1]["kl"] < result.history[0]["kl"]
    assert kl_after < 0.5 * kl_before
    assert ppl_after < ppl_before
