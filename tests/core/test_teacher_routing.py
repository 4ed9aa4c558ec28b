"""moe2dense_core.teacher.routing: router entropy and expert load of a real (tiny) Qwen3-MoE teacher."""

from __future__ import annotations

import math

import pytest
import torch

from moe2dense_core.errors import TeacherError
from moe2dense_core.teacher import TeacherModelConfig, build_teacher
from moe2dense_core.teacher.routing import routing_profile
from tests.flows.tiny_teacher import TINY_TEACHER

CONFIG = TeacherModelConfig(**{**TINY_TEACHER, "num_experts": 6, "top_k": 2, "seq_len": 16})


def test_a_router_that_cannot_tell_experts_apart_has_the_maximal_entropy() -> None:
    model = build_teacher(CONFIG, CONFIG.vocab_size)
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.mlp.gate.weight)
    profile = routing_profile(model, torch.randint(0, CONFIG.vocab_size, (80,)), seq_len=16, batch_size=2)

    assert profile.num_tokens == 80 and len(profile.layers) == CONFIG.num_layers
    for layer in profile.layers:
        assert layer.mean_router_entropy == pytest.approx(math.log(6), abs=1e-6)
        assert sum(layer.load) == pytest.approx(1.0)


def test_identical_tokens_route_identically_so_k_experts_take_the_whole_load() -> None:
    """Every position holds the same token, so every hidden state (attention over identical values) and
    every routing decision is the same: k experts at load 1/k, the others 0."""
    torch.manual_seed(0)
    model = build_teacher(CONFIG, CONFIG.vocab_size)
    for layer in model.model.layers:
        torch.nn.init.normal_(layer.mlp.gate.weight, std=1.0)
    profile = routing_profile(model, torch.full((48,), 7, dtype=torch.long), seq_len=16)

    for layer in profile.layers:
        assert sorted(layer.load, reverse=True) == pytest.approx([0.5, 0.5, 0, 0, 0, 0])
        assert layer.load_entropy == pytest.approx(math.log(2))
        assert layer.max_load_ratio == pytest.approx(6 / 2)
        assert 0 <= layer.mean_router_entropy < math.log(6)
    assert profile.to_dict()["max_entropy"] == pytest.approx(math.log(6))


def test_a_dense_model_or_a_short_stream_is_refused_before_any_forward() -> None:
    dense = build_teacher(CONFIG.model_copy(update={"kind": "dense"}), CONFIG.vocab_size)
    with pytest.raises(TeacherError, match="no routed experts"):
        routing_profile(dense, torch.zeros(32, dtype=torch.long), seq_len=16)
    moe = build_teacher(CONFIG, CONFIG.vocab_size)
    with pytest.raises(TeacherError, match="≥ seq_len=16"):
        routing_profile(moe, torch.zeros(8, dtype=torch.long), seq_len=16)
