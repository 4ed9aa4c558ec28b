"""Sliding-window perplexity: windowing invariants, hand numbers, and tiny1m's published value."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate import perplexity
from moe2dense_core.evaluate.windows import sliding_windows
from tests.core._eval_helpers import FixedLogitsLM, load_tiny1m, one_torch_thread, tiny1m_dir, tinystories_ids


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize(
    ("num_tokens", "window", "stride"), [(10, 4, 2), (10, 4, 4), (9, 5, 3), (3, 8, 1), (100, 16, 7)]
)
def test_every_token_after_the_first_is_scored_exactly_once(
    num_tokens: int, window: int, stride: int
) -> None:
    scored = []
    for w in sliding_windows(num_tokens, window=window, stride=stride):
        assert 1 <= w.score_from < w.length <= window
        scored.extend(range(w.begin + w.score_from, w.end))
    if stride < window:
        assert scored == list(range(1, num_tokens))
    else:  # non-overlapping: each window's first token has no context
        assert scored == [t for t in range(1, num_tokens) if t % window != 0]


def test_context_is_at_least_window_minus_stride() -> None:
    for w in sliding_windows(50, window=8, stride=3)[1:]:
        assert w.score_from >= 8 - 3


def test_uniform_model_has_perplexity_equal_to_vocabulary_size() -> None:
    model = FixedLogitsLM(torch.zeros(7))
    result = perplexity(model, torch.arange(20) % 7, window=6, stride=3)
    assert result.perplexity == pytest.approx(7.0, rel=1e-6)
    assert result.num_scored_tokens == 19


def test_hand_number_for_a_fixed_distribution() -> None:
    row = torch.tensor([2.0, 0.0, -1.0])
    logp = row.log_softmax(-1)
    stream = [0, 1, 2, 0, 0]  # scored targets: 1, 2, 0, 0
    expected = math.exp(-(logp[1] + logp[2] + 2 * logp[0]).item() / 4)
    result = perplexity(FixedLogitsLM(row), stream, window=3, stride=1)
    assert result.perplexity == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 1, "stride": 1}, "window"),
        ({"window": 4, "stride": 0}, "stride"),
        ({"window": 4, "stride": 5}, "stride"),
        ({"window": 4, "stride": 2, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_window_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(Moe2DenseError, match=message):
        perplexity(FixedLogitsLM(torch.zeros(5)), torch.arange(5), **kwargs)


@pytest.mark.parametrize(
    ("token_ids", "message"),
    [
        (torch.zeros(2, 3, dtype=torch.long), "1-D"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([3]), "at least 2"),
        (torch.tensor([0, 5]), r"outside the vocabulary \[0, 5\)"),
    ],
)
def test_bad_token_streams_are_refused(token_ids: torch.Tensor, message: str) -> None:
    with pytest.raises(Moe2DenseError, match=f"token_ids.*{message}"):
        perplexity(FixedLogitsLM(torch.zeros(5)), token_ids, window=4, stride=2)


def test_tiny1m_matches_the_shared_data_readme(shared_data) -> None:
    """README: 5.44 with a 256-token sliding window and stride 128 on tinystories_sample.txt (BOS first)."""
    model, tokenizer = load_tiny1m(tiny1m_dir(shared_data))
    stream = tinystories_ids(shared_data, tokenizer)
    model.train()
    result = perplexity(model, stream, window=256, stride=128, batch_size=4)
    assert result.num_scored_tokens == 1882
    assert result.perplexity == pytest.approx(5.44, abs=0.005)
    assert model.training, "the caller's training mode must be restored"
    one_at_a_time = perplexity(model, stream, window=256, stride=128, batch_size=1)
    assert one_at_a_time.perplexity == pytest.approx(result.perplexity, rel=1e-5)


def test_a_diverged_model_has_infinite_perplexity_not_an_overflow() -> None:
    from moe2dense_core.evaluate.perplexity import perplexity_from_nll

    assert perplexity_from_nll(0.0) == 1.0
    assert perplexity_from_nll(2.0) == pytest.approx(7.389056, rel=1e-6)
    assert perplexity_from_nll(1e6) == float("inf")
