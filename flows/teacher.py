"""Flow `teacher`: train a small MoE teacher (and an equal-size dense one) from scratch on a local corpus.

The honest small-scale stand-in for a released MoE when no model hub is reachable; the demo and the
tests convert it. Read top to bottom:
1. corpus: the builtin offline text (Python's own documentation and docstrings), local files or a hub
   dataset, split train / held-out by document hash;
2. the MoE teacher (Qwen3-MoE): BPE tokenizer trained on the train split, per-layer load balancing;
3. optionally the dense teacher (Qwen3, FFN width E·I, same tokenizer and budget) for the dense→dense
   baseline.
Each teacher is saved with `save_pretrained` (safetensors) and its tokenizer; an identical request
reuses the saved folder (see tasks/teacher.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import BaseModel, ConfigDict

from moe2dense_core.teacher import TeacherModelConfig
from moe2dense_platform.corpus import CorpusSpec
from moe2dense_platform.redaction import install_environment_redaction
from tasks.corpus import prepare_corpus_task
from tasks.teacher import TeacherResult, train_teacher_task


class TeacherRecipe(BaseModel):
    """Corpus, MoE teacher config, whether to also train the dense teacher, and where to save them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    corpus: CorpusSpec = CorpusSpec()
    model: TeacherModelConfig = TeacherModelConfig()
    train_dense: bool = False
    output_dir: Path = Path(".moe2dense/teachers")


class TeacherFlowResult(BaseModel):
    """Paths and records of the trained (or reused) teachers."""

    moe: TeacherResult
    dense: TeacherResult | None = None
    corpus_digest: str
    corpus_train: str
    corpus_heldout: str


DEFAULT_TEACHER_RECIPE = TeacherRecipe()


def planned_stages(recipe: TeacherRecipe) -> list[str]:
    """The task runs `teacher_flow(recipe)` makes, in order: corpus, the MoE teacher, the dense one if asked."""
    return ["corpus", "teacher"] + (["teacher"] if recipe.train_dense else [])


@flow(name="teacher", log_prints=True)
def teacher_flow(recipe: TeacherRecipe = DEFAULT_TEACHER_RECIPE) -> TeacherFlowResult:
    install_environment_redaction()
    root = str(recipe.output_dir)
    corpus = prepare_corpus_task(recipe.corpus, root)
    moe = train_teacher_task(corpus, recipe.model.model_copy(update={"kind": "moe"}), root)
    print(f"MoE teacher: {moe.path} (held-out perplexity {moe.heldout_perplexity:.1f}, reused={moe.reused})")
    dense = None
    if recipe.train_dense:
        dense = train_teacher_task(corpus, recipe.model.model_copy(update={"kind": "dense"}), root)
        print(f"dense teacher: {dense.path} (held-out perplexity {dense.heldout_perplexity:.1f})")
    return TeacherFlowResult(
        moe=moe,
        dense=dense,
        corpus_digest=corpus.digest,
        corpus_train=str(corpus.train),
        corpus_heldout=str(corpus.heldout),
    )
