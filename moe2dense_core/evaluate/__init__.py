"""Evaluation: sliding-window perplexity, teacher–student KL, downstream accuracy through lm-eval.

lm-eval is imported only when `evaluate_downstream` runs, so perplexity and KL work without it.
"""

from moe2dense_core.evaluate.config import PAPER_HUB_TASKS, EvalConfig, TaskSpec
from moe2dense_core.evaluate.downstream import evaluate_downstream
from moe2dense_core.evaluate.kl import KLResult, teacher_student_kl
from moe2dense_core.evaluate.lm_eval_tasks import SHARED_EVAL_FORMATS, shared_eval_tasks
from moe2dense_core.evaluate.perplexity import PerplexityResult, perplexity
from moe2dense_core.evaluate.results import eval_document, evaluate_models, write_eval_document

__all__ = [
    "PAPER_HUB_TASKS",
    "SHARED_EVAL_FORMATS",
    "EvalConfig",
    "KLResult",
    "PerplexityResult",
    "TaskSpec",
    "eval_document",
    "evaluate_downstream",
    "evaluate_models",
    "perplexity",
    "shared_eval_tasks",
    "teacher_student_kl",
    "write_eval_document",
]
