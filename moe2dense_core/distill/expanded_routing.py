"""Expanded teacher routing [paper, Eq. 6]: run the MoE teacher with k' > k active experts.

While producing distillation targets the teacher may activate k' experts per token instead of its
trained k; the paper reports a small gain. Implemented by raising every top-k setting of the loaded
model — `config.num_experts_per_tok` and each module attribute (`top_k`, `num_experts_per_tok`)
holding k — inside a context manager that restores them, even on error. How the k' weights are
normalised is the family's own routing rule, unchanged (e.g. Qwen3-MoE renormalises only when
`norm_topk_prob`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from moe2dense_core.errors import DistillError

_TOP_K_ATTRS = ("top_k", "num_experts_per_tok")
_NUM_EXPERTS_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")


def _teacher_top_k_and_experts(model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "config", None)
    k = getattr(config, "num_experts_per_tok", None)
    experts = next((getattr(config, a) for a in _NUM_EXPERTS_ATTRS if getattr(config, a, None)), None)
    if not isinstance(k, int) or not isinstance(experts, int):
        raise DistillError(
            "expanded teacher routing needs an MoE teacher whose config has num_experts_per_tok and one of "
            f"{_NUM_EXPERTS_ATTRS}; got {type(config).__name__}"
        )
    return k, experts


def check_teacher_top_k(model: nn.Module, top_k: int) -> None:
    """Raise DistillError unless 1 ≤ k' ≤ E and group-limited routing (n_group / topk_group) can reach k'."""
    _, experts = _teacher_top_k_and_experts(model)
    if not 1 <= top_k <= experts:
        raise DistillError(f"teacher_top_k={top_k} must lie in [1, E={experts}] (config num_experts)")
    n_group = getattr(model.config, "n_group", None)
    topk_group = getattr(model.config, "topk_group", None)
    if n_group and topk_group and top_k > topk_group * (experts // n_group):
        raise DistillError(
            f"teacher_top_k={top_k} exceeds what group-limited routing reaches: topk_group={topk_group} "
            f"groups × {experts // n_group} experts; raise topk_group too"
        )


@contextlib.contextmanager
def expanded_teacher_routing(model: nn.Module, top_k: int | None) -> Iterator[nn.Module]:
    """Within the block, `model` routes each token to `top_k` experts (None: unchanged)."""
    if top_k is None:
        yield model
        return
    check_teacher_top_k(model, top_k)
    k, _ = _teacher_top_k_and_experts(model)
    changed: list[tuple[object, str, int]] = [(model.config, "num_experts_per_tok", k)]
    for module in model.modules():
        for attr in _TOP_K_ATTRS:
            if getattr(module, attr, None) == k and isinstance(getattr(module, attr), int):
                changed.append((module, attr, k))
    touched_routers = len(changed) - 1
    if touched_routers == 0:
        raise DistillError(
            f"no router module of {type(model).__name__} holds top_k={k}; cannot expand routing"
        )
    try:
        for owner, attr, _ in changed:
            setattr(owner, attr, top_k)
        yield model
    finally:
        for owner, attr, original in changed:
            setattr(owner, attr, original)
