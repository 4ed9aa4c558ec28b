"""The paper's baselines: dense→dense pruning, random-init students, the equal-budget check and comparison."""

from moe2dense_core.baselines.budget import (
    BudgetMismatchError,
    StudentBudget,
    check_equal_budgets,
    config_parameter_count,
    count_parameters,
)
from moe2dense_core.baselines.channel_importance import ChannelImportance, channel_importance
from moe2dense_core.baselines.compare import ComparisonResult, StudentEntry, StudentKind, compare_students
from moe2dense_core.baselines.d2d_prune import D2DPruneResult, d2d_prune
from moe2dense_core.baselines.random_init import random_ffn_student, random_init_student
from moe2dense_core.baselines.width_pruning import prune_ffn_, prune_hidden_

__all__ = [
    "BudgetMismatchError",
    "ChannelImportance",
    "ComparisonResult",
    "D2DPruneResult",
    "StudentBudget",
    "StudentEntry",
    "StudentKind",
    "channel_importance",
    "check_equal_budgets",
    "compare_students",
    "config_parameter_count",
    "count_parameters",
    "d2d_prune",
    "prune_ffn_",
    "prune_hidden_",
    "random_ffn_student",
    "random_init_student",
]
