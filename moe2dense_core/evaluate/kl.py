"""Teacher–student KL on held-out text: how far the student's next-token distribution is from the teacher's.

    KL(p_T ‖ p_S) = (1/N) Σ_t Σ_v p_T(v | x_{<t}) · (log p_T(v | x_{<t}) − log p_S(v | x_{<t}))

the forward KL that the paper distills with [paper, Eq. 5], at temperature 1, averaged over the
same N scored tokens as `perplexity` (same sliding windows, so teacher and student see identical
contexts) [defined here]. Both models must emit the same vocabulary. Sums are float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate.model_io import eval_mode, model_device, output_vocab_size
from moe2dense_core.evaluate.windows import as_token_stream, scored_predictions, window_batches


@dataclass(frozen=True)
class KLResult:
    """mean_kl in nats per scored token (≥ 0; 0 iff the distributions agree on every scored token)."""

    mean_kl: float
    num_scored_tokens: int
    window: int
    stride: int


def teacher_student_kl(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    token_ids: torch.Tensor | Sequence[int],
    *,
    window: int,
    stride: int,
    batch_size: int = 4,
) -> KLResult:
    """Mean forward KL(teacher ‖ student) per token over one held-out stream token_ids [N].

    The two models may sit on different devices; logits are compared on the student's device.
    """
    student_vocab, teacher_vocab = output_vocab_size(student), output_vocab_size(teacher)
    if student_vocab != teacher_vocab:
        raise Moe2DenseError(
            f"teacher_student_kl: the student emits {student_vocab} logits per token and the teacher "
            f"{teacher_vocab}; KL needs one shared vocabulary"
        )
    ids = as_token_stream(token_ids, vocab_size=student_vocab, name="token_ids")
    student_device, teacher_device = model_device(student), model_device(teacher)
    batches = window_batches(ids, window=window, stride=stride, batch_size=batch_size, device=student_device)
    total_kl = 0.0
    count = 0
    with eval_mode(student), eval_mode(teacher), torch.inference_mode():
        for group, inputs in batches:
            student_logits, _ = scored_predictions(student, inputs, group)
            teacher_logits, _ = scored_predictions(teacher, inputs.to(teacher_device), group)
            student_logp = student_logits.log_softmax(-1)
            teacher_logp = teacher_logits.to(student_device).log_softmax(-1)
            per_token = torch.nn.functional.kl_div(
                student_logp, teacher_logp, log_target=True, reduction="none"
            )
            total_kl += float(per_token.sum(-1).double().sum())
            count += per_token.shape[0]
    return KLResult(max(total_kl / count, 0.0), count, window, stride)
