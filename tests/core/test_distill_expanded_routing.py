"""Expanded teacher routing (paper Eq. 6): k' experts per token inside the context, k restored after."""

from __future__ import annotations

import pytest
import torch

from moe2dense_core.distill import DistillConfig, DistillError, distill, expanded_teacher_routing
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher


def _routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("TopKRouter")]


def test_routers_pick_k_prime_experts_inside_and_k_after() -> None:
    teacher = tiny_teacher(seed=4)
    ids = random_rows(2, 8, seed=1)
    seen: list[int] = []
    hooks = [
        r.register_forward_hook(lambda _m, _i, out: seen.append(out[2].shape[-1])) for r in _routers(teacher)
    ]
    with torch.no_grad():
        base = teacher(input_ids=ids).logits
        with expanded_teacher_routing(teacher, 4):
            assert teacher.config.num_experts_per_tok == 4
            expanded = teacher(input_ids=ids).logits
        again = teacher(input_ids=ids).logits
    for h in hooks:
        h.remove()
    assert seen == [2, 2, 4, 4, 2, 2]
    assert not torch.allclose(base, expanded) and torch.equal(base, again)
    assert teacher.config.num_experts_per_tok == 2 and all(r.top_k == 2 for r in _routers(teacher))


def test_settings_are_restored_when_the_block_raises() -> None:
    teacher = tiny_teacher(seed=4)
    with pytest.raises(RuntimeError, match="boom"), expanded_teacher_routing(teacher, 8):
        raise RuntimeError("boom")
    assert teacher.config.num_experts_per_tok == 2 and all(r.top_k == 2 for r in _routers(teacher))


def test_unreachable_k_prime_is_refused_before_any_forward() -> None:
    teacher = tiny_teacher(seed=4)
    with (
        pytest.raises(DistillError, match=r"teacher_top_k=9 must lie in \[1, E=8\]"),
        expanded_teacher_routing(teacher, 9),
    ):
        pass
    teacher.config.n_group, teacher.config.topk_group = 4, 1  # group-limited: 1 group of 2 experts
    with pytest.raises(DistillError, match="group-limited"), expanded_teacher_routing(teacher, 3):
        pass
    with (
        pytest.raises(DistillError, match="num_experts_per_tok"),
        expanded_teacher_routing(dense_student_from_teacher(tiny_teacher()), 2),
    ):
        pass


def test_distill_uses_expanded_routing_for_targets_only() -> None:
    teacher = tiny_teacher(seed=4)
    data = random_rows(4, 8, seed=3)
    config = DistillConfig(max_steps=1, micro_batch_size=4, precision="fp32", lr=1e-3)
    plain = distill(dense_student_from_teacher(teacher), teacher, data, config)
    expanded = distill(
        dense_student_from_teacher(teacher), teacher, data, config.model_copy(update={"teacher_top_k": 4})
    )
    assert expanded.final_metrics["kl"] != plain.final_metrics["kl"]
    assert teacher.config.num_experts_per_tok == 2
    with pytest.raises(DistillError, match="E=8"):
        distill(
            dense_student_from_teacher(teacher),
            teacher,
            data,
            config.model_copy(update={"teacher_top_k": 16}),
        )
