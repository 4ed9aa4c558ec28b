"""Distillation losses on log-probabilities: forward KL (the paper's), reverse KL, JSD, next-token CE.

Notation: teacher logits z_t, student logits z_s, temperature T, p = softmax(z_t / T),
q = softmax(z_s / T), over a support of size V (the vocabulary, or the k + 1 buckets of a top-k cache,
see `topk_bucket_logprobs`). Every divergence here takes log-probabilities `[..., V]` and returns one
value per token `[...]`; `kd_loss` reduces them over the unmasked tokens.

- forward KL [paper, Eq. 5]:   KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)
- reverse KL [paper's ablation]: KL(q ‖ p) = Σ_v q_v (log q_v − log p_v)
- JSD_β [defined here, generalised JSD as in GKD]: β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β p + (1 − β) q
- temperature [defined here, Hinton et al.]: the divergence is multiplied by T² so gradient magnitudes
  do not shrink as 1/T² when T grows; T = 1 (the default) leaves the paper's loss unchanged.

Terms with p_v = 0 (log p_v = −inf) contribute 0, as 0·log 0 = 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

LossName = Literal["forward_kl", "reverse_kl", "jsd"]


def temperature_logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(z / T) in float32: [..., V] logits (any float dtype) → [..., V] float32."""
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    return F.log_softmax(scaled, dim=-1)


def _finite(log_probs: torch.Tensor) -> torch.Tensor:
    """−inf → the lowest finite float, for tensors outside autograd (teacher side, cached targets).

    Log-probabilities that require grad (the student's, from log_softmax of finite logits, or its
    buckets) are finite by construction and are passed through untouched: no extra autograd op.
    """
    if log_probs.requires_grad:
        return log_probs
    return log_probs.clamp(min=torch.finfo(log_probs.dtype).min)


def _kl_terms(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ_v a_v (log a_v − log b_v) over the last dim, with 0·log 0 = 0: [..., V] → [...].

    −inf entries (a zero probability) are clamped to the lowest finite float f, so exp(f) = 0 makes
    their term exactly 0 instead of NaN (also where both sides are −inf); a_v > 0 against
    log b_v = −inf gives a huge finite term instead of +inf.
    """
    return F.kl_div(_finite(log_b), _finite(log_a), reduction="none", log_target=True).sum(dim=-1)


def forward_kl_per_token(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per token [paper, Eq. 5]: [..., V] log p, [..., V] log q → [...]."""
    return _kl_terms(teacher_logprobs, student_logprobs)


def reverse_kl_per_token(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ p) per token: [..., V] log p, [..., V] log q → [...]."""
    return _kl_terms(student_logprobs, teacher_logprobs)


def jsd_per_token(
    teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β p + (1 − β) q, per token: [..., V] ×2 → [...]."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must lie in (0, 1), got {beta}")
    log_m = torch.logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log1p(-beta))
    return beta * _kl_terms(teacher_logprobs, log_m) + (1.0 - beta) * _kl_terms(student_logprobs, log_m)


def divergence_per_token(
    name: LossName, teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, *, jsd_beta: float = 0.5
) -> torch.Tensor:
    """The divergence called `name` per token: [..., V] log p, [..., V] log q → [...]."""
    if name == "forward_kl":
        return forward_kl_per_token(teacher_logprobs, student_logprobs)
    if name == "reverse_kl":
        return reverse_kl_per_token(teacher_logprobs, student_logprobs)
    if name == "jsd":
        return jsd_per_token(teacher_logprobs, student_logprobs, jsd_beta)
    raise ValueError(f"unknown distillation loss {name!r}; choose forward_kl, reverse_kl or jsd")


def divergence_sum(
    name: LossName, teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, *, jsd_beta: float = 0.5
) -> torch.Tensor:
    """Σ over every token of `divergence_per_token` (no mask), without a per-element temporary.

    The training loop's fast path: needs finite teacher log-probabilities (the teacher sources clamp
    −inf to the lowest float in place); equals `divergence_per_token(...).sum()` on finite inputs.
    """
    if name == "forward_kl":
        return F.kl_div(student_logprobs, teacher_logprobs, reduction="sum", log_target=True)
    if name == "reverse_kl":
        return F.kl_div(teacher_logprobs, student_logprobs, reduction="sum", log_target=True)
    return divergence_per_token(name, teacher_logprobs, student_logprobs, jsd_beta=jsd_beta).sum()


def finite_logprobs_(log_probs: torch.Tensor) -> torch.Tensor:
    """In place: −inf → the lowest finite float (a zero probability stays exactly 0 after exp)."""
    return log_probs.clamp_(min=torch.finfo(log_probs.dtype).min)


def masked_sum(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ of `values` [...] over positions where `mask` [...] is true (all positions if None)."""
    if mask is None:
        return values.sum()
    if mask.shape != values.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match per-token values {tuple(values.shape)}"
        )
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum()


def token_count(mask: torch.Tensor | None, like: torch.Tensor) -> int:
    """Number of unmasked tokens: mask.sum(), or like.numel() when there is no mask."""
    return like.numel() if mask is None else int(mask.bool().sum())


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    loss: LossName = "forward_kl",
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """T² · mean over unmasked tokens of the divergence between softmax(z_t/T) and softmax(z_s/T).

    student_logits, teacher_logits: [B, L, V]; mask: [B, L] (true = counted; padding false).
    Returns a scalar; NaN-free and 0 when no token is unmasked.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    per_token = divergence_per_token(
        loss,
        temperature_logprobs(teacher_logits, temperature),
        temperature_logprobs(student_logits, temperature),
        jsd_beta=jsd_beta,
    )
    count = max(token_count(mask, per_token), 1)
    return temperature**2 * masked_sum(per_token, mask) / count


def topk_bucket_logprobs(
    student_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail_logprob: torch.Tensor,
    vocab_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student distributions coarsened to the teacher's top-k ids plus one tail bucket.

    [defined here] The cache keeps, per token, the teacher's k largest log-probabilities log p_S over
    ids S and the exact tail log-mass log r = log Σ_{v∉S} p_v (computed from the full logits when the
    cache is written). The student is coarsened the same way: log q_S gathered at S and
    log q_tail = logsumexp_{v∉S} log q_v. Any divergence is then taken between the (k + 1)-bucket
    distributions. For forward KL, by the chain rule, KL(p ‖ q) = KL_buckets + r · KL(p̃ ‖ q̃) with
    p̃, q̃ the distributions renormalised inside the tail: the cached loss is a lower bound whose gap is
    r · KL(p̃ ‖ q̃) (0 when k = V, where the empty tail bucket is dropped), and the tail bucket still
    pulls the student's total off-top-k mass q_tail towards r.

    student_logprobs: [B, L, V]; topk_ids: [B, L, k] (int); teacher_topk_logprobs: [B, L, k];
    teacher_tail_logprob: [B, L]. Returns (teacher [B, L, S], student [B, L, S]) log-probabilities with
    S = k + 1, or S = k when k = V (the tail is empty and dropped).
    """
    k = topk_ids.shape[-1]
    ids = topk_ids.long()
    student_top = student_logprobs.gather(-1, ids)
    if k == vocab_size:
        return teacher_topk_logprobs.float(), student_top
    outside = torch.ones_like(student_logprobs, dtype=torch.bool).scatter_(-1, ids, False)
    student_tail = torch.logsumexp(student_logprobs.masked_fill(~outside, float("-inf")), dim=-1)
    teacher = torch.cat([teacher_topk_logprobs.float(), teacher_tail_logprob.float().unsqueeze(-1)], dim=-1)
    student = torch.cat([student_top, student_tail.unsqueeze(-1)], dim=-1)
    return teacher, student


def next_token_ce_sum(
    student_logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Σ over predicted positions of −log q(x_{i+1} | x_≤i), and how many positions were counted.

    student_logits [B, L, V], input_ids [B, L], mask [B, L] (a position counts when both it and its
    target are unmasked). Positions 0..L−2 predict tokens 1..L−1.
    """
    logits = student_logits[:, :-1].float()
    targets = input_ids[:, 1:]
    valid = None if mask is None else (mask[:, :-1].bool() & mask[:, 1:].bool())
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    per_token = per_token.view_as(targets)
    return masked_sum(per_token, valid), token_count(valid, per_token)
