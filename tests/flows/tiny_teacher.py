"""A tiny trained MoE teacher for flow and task tests: 4 experts top-2, hidden 32, 30 steps (seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY_TEACHER = dict(
    vocab_size=300,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    num_experts=4,
    top_k=2,
    expert_width=16,
    seq_len=64,
    batch_size=8,
    steps=30,
    lr=1e-2,
    warmup_steps=5,
    eval_windows=8,
)
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "mouse"]


def animal_paragraphs(count: int) -> list[str]:
    """`count` short synthetic English paragraphs (a tiny, learnable vocabulary) to train a teacher on."""
    return [
        f"The {ANIMALS[i % 6]} sat near the {ANIMALS[(i * 5 + 1) % 6]}. It was a quiet day number {i % 17}."
        for i in range(count)
    ]


@dataclass(frozen=True)
class TinyTeacher:
    path: Path
    text: Path

    def recipe(self, *overrides: str):
        """configs/demo.yaml shrunk to seconds on this teacher (plus `overrides`)."""
        from moe2dense_platform.recipe_io import load_recipe

        data = f"{{source: files, paths: [{self.text}], heldout_fraction: 0.2}}"
        tiny = [
            f"source.model={self.path}",
            f"calibration.data={data}",
            "calibration.num_tokens=1024",
            "calibration.seq_len=64",
            f"distillation.data={data}",
            "distillation.seq_len=64",
            "distillation.train.max_steps=4",
            "distillation.train.warmup_steps=1",
            "distillation.train.micro_batch_size=4",
            f"evaluation.perplexity_data={data}",
            "evaluation.perplexity_tokens=512",
            "evaluation.seq_len=64",
        ]
        return load_recipe(PROJECT_ROOT / "configs" / "demo.yaml", [*tiny, *overrides])


def make_random_teacher(root: Path, paragraphs: int) -> TinyTeacher:
    """A tiny random-init Qwen3-MoE (byte-level tokenizer, no training: for stages that only need its
    weights) under `root`, and `paragraphs` paragraphs of English text to calibrate or distil on."""
    from tests.fixtures.tiny_moe import build_tiny_moe

    text = root / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(paragraphs)))
    return TinyTeacher(build_tiny_moe("qwen3_moe", root / "qwen3_moe"), text)


def make_tiny_teacher(root: Path) -> TinyTeacher:
    """Write a small synthetic English text under `root` and train the tiny teacher on it."""
    from moe2dense_core.teacher import TeacherModelConfig
    from moe2dense_platform.corpus import CorpusSpec, write_corpus
    from tasks.teacher import train_or_reuse_teacher

    text = root / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(3000)))
    corpus = write_corpus(CorpusSpec(source="files", paths=(text,), heldout_fraction=0.2), root / "corpus")
    teacher = train_or_reuse_teacher(corpus, TeacherModelConfig(**TINY_TEACHER), root / "teachers")
    return TinyTeacher(Path(teacher.path), text)
