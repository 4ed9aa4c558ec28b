"""Loss math against hand numbers: KL = 0 for equal logits, temperature scaling, padding masked,
reverse KL / JSD identities, next-token CE, and the top-k bucket coarsening."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.distill import (
    divergence_per_token,
    divergence_sum,
    forward_kl_per_token,
    jsd_per_token,
    kd_loss,
    next_token_ce_sum,
    reverse_kl_per_token,
    temperature_logprobs,
    topk_bucket_logprobs,
)

LOG3 = math.log(3.0)


def _logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([list(rows)], dtype=torch.float32)  # [1, L, V]


def test_kl_is_zero_for_equal_logits_in_every_divergence() -> None:
    logits = torch.randn(2, 5, 11)
    for loss in ("forward_kl", "reverse_kl", "jsd"):
        assert kd_loss(logits, logits.clone(), loss=loss, temperature=2.0).item() == pytest.approx(
            0.0, abs=1e-6
        )


def test_forward_kl_matches_hand_value() -> None:
    # p = softmax([0, ln 3]) = [1/4, 3/4]; q = [1/2, 1/2]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    value = kd_loss(_logits([0.0, 0.0]), _logits([0.0, LOG3]))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert value.item() == pytest.approx(0.130812, abs=1e-6)


def test_temperature_softens_both_sides_and_scales_by_t_squared() -> None:
    # T = 2: p = softmax([0, ln 3 / 2]) = [1/(1+√3), √3/(1+√3)], q uniform; loss = T² · KL
    p0 = 1.0 / (1.0 + math.sqrt(3.0))
    p1 = 1.0 - p0
    kl = p0 * math.log(p0 / 0.5) + p1 * math.log(p1 / 0.5)
    value = kd_loss(_logits([0.0, 0.0]), _logits([0.0, LOG3]), temperature=2.0)
    assert value.item() == pytest.approx(4.0 * kl, rel=1e-6)


def test_reverse_kl_and_jsd_match_hand_values() -> None:
    p, q = torch.tensor([0.25, 0.75], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    reverse = float((q * (q / p).log()).sum())
    m = 0.5 * (p + q)
    jsd = float(0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum())
    assert reverse_kl_per_token(p.log(), q.log()).item() == pytest.approx(reverse, rel=1e-6)
    assert jsd_per_token(p.log(), q.log(), 0.5).item() == pytest.approx(jsd, rel=1e-6)
    assert kd_loss(_logits([0.0, 0.0]), _logits([0.0, LOG3]), loss="reverse_kl").item() == pytest.approx(
        reverse, rel=1e-6
    )


def test_padding_positions_are_masked_out_of_the_mean() -> None:
    teacher = _logits([0.0, LOG3], [0.0, LOG3], [5.0, -5.0])
    student = _logits([0.0, 0.0], [0.0, 0.0], [-5.0, 5.0])  # third position: a huge KL, but padding
    mask = torch.tensor([[1, 1, 0]])
    masked = kd_loss(student, teacher, mask=mask)
    assert masked.item() == pytest.approx(0.130812, abs=1e-6)
    assert kd_loss(student, teacher).item() > 3.0
    student.requires_grad_(True)
    kd_loss(student, teacher, mask=mask).backward()
    assert torch.all(student.grad[0, 2] == 0) and torch.any(student.grad[0, 0] != 0)


def test_zero_teacher_probability_contributes_nothing() -> None:
    teacher_logp = torch.tensor([[0.0, float("-inf")]])  # p = [1, 0]
    student_logp = torch.log(torch.tensor([[0.5, 0.5]]))
    assert forward_kl_per_token(teacher_logp, student_logp).item() == pytest.approx(math.log(2.0), rel=1e-6)
    both_zero = torch.tensor([[0.0, float("-inf")]])  # p = q = [1, 0]: KL = 0, not NaN
    assert forward_kl_per_token(both_zero, both_zero.clone()).item() == 0.0
    student = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
    forward_kl_per_token(teacher_logp, student).backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 1] == 0


def test_next_token_ce_counts_predicted_positions_and_honours_mask() -> None:
    logits = torch.zeros(1, 3, 4)  # uniform: −log q = ln 4 at every position
    ids = torch.tensor([[1, 2, 3]])
    total, count = next_token_ce_sum(logits, ids)
    assert count == 2 and total.item() == pytest.approx(2 * math.log(4.0), rel=1e-6)
    total, count = next_token_ce_sum(logits, ids, torch.tensor([[1, 1, 0]]))
    assert count == 1 and total.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_topk_buckets_with_full_vocabulary_equal_the_full_distributions() -> None:
    teacher_logp = temperature_logprobs(torch.randn(2, 3, 7))
    student_logp = temperature_logprobs(torch.randn(2, 3, 7))
    values, ids = teacher_logp.topk(7, dim=-1)
    tail = torch.full(values.shape[:-1], float("-inf"))
    t_buckets, s_buckets = topk_bucket_logprobs(student_logp, ids, values, tail, vocab_size=7)
    assert torch.allclose(
        forward_kl_per_token(t_buckets, s_buckets),
        forward_kl_per_token(teacher_logp, student_logp),
        atol=1e-6,
    )


def test_topk_buckets_keep_the_tail_mass_and_lower_bound_the_kl() -> None:
    teacher_logp = temperature_logprobs(torch.randn(4, 5, 9))
    student_logp = temperature_logprobs(torch.randn(4, 5, 9))
    values, ids = teacher_logp.topk(3, dim=-1)
    tail = torch.logsumexp(teacher_logp.scatter(-1, ids, float("-inf")), dim=-1)
    t_buckets, s_buckets = topk_bucket_logprobs(student_logp, ids, values, tail, vocab_size=9)
    assert t_buckets.shape[-1] == 4
    assert torch.allclose(t_buckets.exp().sum(-1), torch.ones(4, 5), atol=1e-5)
    assert torch.allclose(s_buckets.exp().sum(-1), torch.ones(4, 5), atol=1e-5)
    full = forward_kl_per_token(teacher_logp, student_logp)
    bucketed = forward_kl_per_token(t_buckets, s_buckets)
    assert torch.all(bucketed <= full + 1e-6) and torch.all(bucketed >= -1e-6)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        kd_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="unknown distillation loss"):
        kd_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), loss="mse")  # type: ignore[arg-type]


def test_divergence_sum_equals_the_per_token_sum() -> None:
    teacher_logp = temperature_logprobs(torch.randn(2, 3, 7))
    student_logp = temperature_logprobs(torch.randn(2, 3, 7))
    for name in ("forward_kl", "reverse_kl", "jsd"):
        per_token = divergence_per_token(name, teacher_logp, student_logp)
        assert divergence_sum(name, teacher_logp, student_logp).item() == pytest.approx(
            per_token.sum().item(), rel=1e-5
        )
