"""The equal-budget check: the comparison refuses to run unless sizes and token budgets match."""

from __future__ import annotations

import pytest

from moe2dense_core.baselines import (
    BudgetMismatchError,
    StudentBudget,
    check_equal_budgets,
    config_parameter_count,
    count_parameters,
)


def _s(name: str, params: int, tokens: int = 1_000_000) -> StudentBudget:
    return StudentBudget(name=name, num_params=params, train_tokens=tokens)


def test_equal_budgets_pass() -> None:
    check_equal_budgets([_s("do_acp", 3_340_000), _s("random_ffn", 3_340_000), _s("d2d", 3_360_000)])
    check_equal_budgets([_s("a", 100), _s("b", 100)], param_rel_tol=0.0)


def test_parameter_mismatch_names_the_students_and_counts() -> None:
    with pytest.raises(
        BudgetMismatchError, match=r"more than 1.00% of 'do_acp'.*\['d2d'\].*d2d: 3,440,000 params"
    ):
        check_equal_budgets([_s("do_acp", 3_340_000), _s("random", 3_340_000), _s("d2d", 3_440_000)])
    with pytest.raises(BudgetMismatchError, match=r"\['b'\]"):
        check_equal_budgets([_s("a", 100), _s("b", 101)], param_rel_tol=0.0)


def test_token_budgets_must_be_exactly_equal() -> None:
    with pytest.raises(
        BudgetMismatchError, match=r"token budgets differ from 'a'.*\['b'\].*b: 100 params / 999,999 tokens"
    ):
        check_equal_budgets([_s("a", 100), _s("b", 100, tokens=999_999)])


@pytest.mark.parametrize(
    ("students", "kwargs", "message"),
    [
        ([_s("a", 1)], {}, "at least 2 students"),
        ([_s("a", 1), _s("a", 1)], {}, "unique"),
        ([_s("a", 1), _s("b", 1)], {"param_rel_tol": -0.1}, "param_rel_tol"),
    ],
)
def test_malformed_comparisons_are_refused(students: list, kwargs: dict, message: str) -> None:
    with pytest.raises(BudgetMismatchError, match=message):
        check_equal_budgets(students, **kwargs)


def test_tied_weights_count_once_and_config_counts_match_built_models() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # embeddings 64·16 (shared with the head) + q,k,v,o 4·16·16 + FFN 3·16·24 + 3 norms of 16
    expected = 64 * 16 + 4 * 16 * 16 + 3 * 16 * 24 + 3 * 16
    assert count_parameters(model) == expected == config_parameter_count(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
