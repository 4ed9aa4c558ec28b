"""The comparison's fairness check: every compared student has the same size and the same training budget.

The paper compares its converted students with baselines "at the same data and token budget"
[paper]. `check_equal_budgets` refuses a comparison unless
  |P_i − P_ref| ≤ param_rel_tol · P_ref   for every student i (P = unique parameters, ref = first), and
  T_i = T_ref                              (T = distillation tokens, exact).
param_rel_tol defaults to 1% [defined here]: a pruned dense baseline can only hit a parameter target
to within one pruning unit (e.g. 3·L·H parameters per FFN channel), while token budgets are set
exactly by the data loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from moe2dense_core.errors import BudgetMismatchError

DEFAULT_PARAM_REL_TOL = 0.01


class StudentBudget(BaseModel):
    """One compared student: a label, its unique parameter count and its distillation token budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    num_params: int = Field(ge=1)
    train_tokens: int = Field(ge=0)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters of a model (tied weights, e.g. embeddings shared with the LM head, count once)."""
    return sum(p.numel() for p in model.parameters())


def config_parameter_count(config) -> int:
    """Parameters of the causal LM a transformers config describes, counted on the meta device (no memory).

    config: a transformers PretrainedConfig, or a checkpoint folder holding config.json.
    """
    from transformers import AutoModelForCausalLM

    from moe2dense_core.pretrained import load_config

    if isinstance(config, str | Path):
        config = load_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)


def check_equal_budgets(
    students: Sequence[StudentBudget], *, param_rel_tol: float = DEFAULT_PARAM_REL_TOL
) -> None:
    """Raise BudgetMismatchError unless all students match the first one's size (within tolerance) and tokens."""
    if len(students) < 2:
        raise BudgetMismatchError(f"a comparison needs at least 2 students, got {len(students)}")
    if param_rel_tol < 0:
        raise BudgetMismatchError(f"param_rel_tol must be ≥ 0, got {param_rel_tol}")
    names = [s.name for s in students]
    if len(set(names)) != len(names):
        raise BudgetMismatchError(f"student names must be unique, got {names}")
    ref = students[0]
    listing = ", ".join(f"{s.name}: {s.num_params:,} params / {s.train_tokens:,} tokens" for s in students)
    too_far = [
        s.name for s in students if abs(s.num_params - ref.num_params) > param_rel_tol * ref.num_params
    ]
    if too_far:
        raise BudgetMismatchError(
            f"parameter counts differ by more than {param_rel_tol:.2%} of {ref.name!r}'s for {too_far} ({listing})"
        )
    other_tokens = [s.name for s in students if s.train_tokens != ref.train_tokens]
    if other_tokens:
        raise BudgetMismatchError(f"token budgets differ from {ref.name!r}'s for {other_tokens} ({listing})")
