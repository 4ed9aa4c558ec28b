"""Distillation on several processes in recipes: W = nnodes × nproc_per_node, tokens per step
micro_batch_size × grad_accum_steps × W × seq_len, a stated token_budget within one step of
max_steps × tokens_per_step; the paper recipes state theirs and pin their teachers to commit shas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moe2dense_platform.recipe import RecipeError, parse_recipe
from moe2dense_platform.recipe_io import load_recipe

PAPER = sorted((Path(__file__).resolve().parents[2] / "configs" / "paper").glob("*.yaml"))
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def distillation(**fields) -> dict:
    return {
        "name": "t",
        "source": {"model": "./teacher"},
        "distillation": {
            "seq_len": 100,
            "train": {"max_steps": 10, "micro_batch_size": 2, "grad_accum_steps": 3},
            **fields,
        },
    }


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_recipes_reach_their_token_budget_on_their_processes(path: Path) -> None:
    settings = load_recipe(path).distillation
    train = settings.train
    per_step = (
        train.micro_batch_size
        * train.grad_accum_steps
        * settings.nnodes
        * settings.nproc_per_node
        * settings.seq_len
    )
    assert settings.tokens_per_step(settings.world_size) == per_step
    assert abs(train.max_steps * per_step - settings.token_budget) < per_step


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_recipes_pin_every_revision_to_a_commit_sha(path: Path) -> None:
    written = re.findall(r"^\s*revision:\s*(\S+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    assert written and all(COMMIT_SHA.fullmatch(value) for value in written), written
    assert COMMIT_SHA.fullmatch(load_recipe(path).source.revision)


def test_tokens_per_step_follow_the_process_counts() -> None:
    settings = parse_recipe(distillation(nproc_per_node=4, nnodes=2, token_budget=48_000)).distillation
    assert settings.world_size == 8
    assert settings.tokens_per_step(8) == 2 * 3 * 8 * 100 == settings.token_budget // 10
    assert parse_recipe(distillation()).distillation.world_size == 1  # one process unless stated


def test_a_token_budget_off_by_a_step_is_refused_naming_the_max_steps_that_fits() -> None:
    parse_recipe(
        distillation(nproc_per_node=4, token_budget=24_000 + 2_399)
    )  # within one step (2,400 tokens)
    with pytest.raises(
        RecipeError, match=r"token_budget 26,400 is not within one step .* max_steps 11 would fit"
    ):
        parse_recipe(distillation(nproc_per_node=4, token_budget=26_400))
    with pytest.raises(RecipeError, match="token_budget needs a fixed nproc_per_node"):
        parse_recipe(distillation(nproc_per_node="auto", token_budget=24_000))


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("nproc_per_node", 0, "nproc_per_node: expected a whole number ≥ 1 or 'auto'"),
        ("nproc_per_node", "all", "nproc_per_node: expected a whole number ≥ 1 or 'auto'"),
        ("nproc_per_node", True, "nproc_per_node: Input should be a number, not a boolean"),
        ("nnodes", 0, "distillation.nnodes: Input should be greater than or equal to 1"),
    ],
)
def test_process_counts_are_whole_numbers(field: str, value: object, expected: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(expected)):
        parse_recipe(distillation(**{field: value}))
    assert parse_recipe(distillation(nproc_per_node="auto")).distillation.world_size is None
