"""Teacher–student KL: zero for equal models, hand numbers, vocabulary checks, and a real model."""

from __future__ import annotations

import copy

import pytest
import torch

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate import teacher_student_kl
from tests.core._eval_helpers import FixedLogitsLM, load_tiny1m, one_torch_thread, tiny1m_dir, tinystories_ids


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def test_equal_distributions_give_zero() -> None:
    row = torch.tensor([0.3, -1.0, 2.0, 0.0])
    result = teacher_student_kl(
        FixedLogitsLM(row), FixedLogitsLM(row + 5.0), torch.arange(12) % 4, window=5, stride=2
    )
    assert result.mean_kl == pytest.approx(0.0, abs=1e-7)
    assert result.num_scored_tokens == 11


def test_hand_number_against_a_uniform_student() -> None:
    """KL(p ‖ uniform) = log V − H(p) at every position, whatever the tokens."""
    teacher_row = torch.tensor([1.0, 0.0, -2.0, 0.5, 0.0])
    p = teacher_row.softmax(-1)
    expected = float(torch.log(torch.tensor(5.0)) + (p * p.log()).sum())
    result = teacher_student_kl(
        FixedLogitsLM(torch.zeros(5)), FixedLogitsLM(teacher_row), [0, 3, 1, 4, 2, 2], window=4, stride=4
    )
    assert result.mean_kl == pytest.approx(expected, rel=1e-6)


def test_forward_direction_teacher_first() -> None:
    """KL(T ‖ S) ≠ KL(S ‖ T) in general: swapping the models changes the value."""
    a, b = FixedLogitsLM(torch.tensor([3.0, 0.0, 0.0])), FixedLogitsLM(torch.tensor([0.0, 0.0, 0.0]))
    forward = teacher_student_kl(b, a, [0, 1, 2, 0], window=4, stride=4).mean_kl
    pa = torch.tensor([3.0, 0.0, 0.0]).softmax(-1)
    assert forward == pytest.approx(float((pa * (pa.log() - torch.log(torch.tensor(1 / 3)))).sum()), rel=1e-6)
    assert teacher_student_kl(a, b, [0, 1, 2, 0], window=4, stride=4).mean_kl != pytest.approx(forward)


def test_vocabulary_mismatch_is_refused() -> None:
    with pytest.raises(Moe2DenseError, match="student emits 4 logits.*teacher 5"):
        teacher_student_kl(
            FixedLogitsLM(torch.zeros(4)), FixedLogitsLM(torch.zeros(5)), [0, 1, 2], window=3, stride=1
        )


def test_tiny1m_against_itself_and_a_perturbed_copy(shared_data) -> None:
    teacher, tokenizer = load_tiny1m(tiny1m_dir(shared_data))
    stream = tinystories_ids(shared_data, tokenizer)[:300]
    assert teacher_student_kl(teacher, teacher, stream, window=128, stride=64).mean_kl == pytest.approx(
        0.0, abs=1e-6
    )
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    result = teacher_student_kl(student, teacher, stream, window=128, stride=64)
    assert result.num_scored_tokens == 299
    assert 1e-4 < result.mean_kl < 5.0
