"""attach_stat_hooks on a real (tiny, hand-set) Qwen3-MoE: what the hooks see, chunking, hook removal."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe2dense_core.arch import get_spec
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.hooks import attach_stat_hooks
from moe2dense_core.stats.layer_stats import SUM_FIELDS, LayerStats, StatsError

X = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]  # 3 tokens, H = 2
ROUTER = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]  # E = 3
GATE = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # I = 1: one gate row, one up row, one down column per expert
UP = [[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]]
DOWN = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]


def hand_model() -> Qwen3MoeForCausalLM:
    config = Qwen3MoeConfig(
        vocab_size=16,
        hidden_size=2,
        intermediate_size=4,
        moe_intermediate_size=1,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=2,
        num_experts=3,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        experts_implementation="eager",  # the default grouped GEMM needs 16-byte strides; H = 2 has 8
    )
    model = Qwen3MoeForCausalLM(config).eval()
    block = model.model.layers[0].mlp
    with torch.no_grad():
        block.gate.weight.copy_(torch.tensor(ROUTER))
        block.experts.gate_up_proj.copy_(torch.tensor([[g, u] for g, u in zip(GATE, UP, strict=True)]))
        block.experts.down_proj.copy_(torch.tensor(DOWN)[:, :, None])
    return model


def model_config(model: Qwen3MoeForCausalLM) -> dict:
    config = model.config.to_dict()
    config["num_experts"] = model.config.num_experts
    return config


def empty_stats(model: Qwen3MoeForCausalLM) -> ExpertStats:
    return ExpertStats(model_config(model), "qwen3_moe", num_experts=3, top_k=2)


def hand_layer_stats() -> LayerStats:
    """Router, top-2 with renormalisation and all three experts on all three tokens, in scalar arithmetic."""
    probs, weights, indices, outputs = [], [], [], [[], [], []]
    for x in X:
        logits = [r[0] * x[0] + r[1] * x[1] for r in ROUTER]
        z = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / z for v in logits]
        top = sorted(range(3), key=lambda e: -p[e])[:2]
        probs.append(p)
        indices.append(top)
        weights.append([p[e] / (p[top[0]] + p[top[1]]) for e in top])
        for e in range(3):
            g = GATE[e][0] * x[0] + GATE[e][1] * x[1]
            u = UP[e][0] * x[0] + UP[e][1] * x[1]
            a = g / (1.0 + math.exp(-g)) * u
            outputs[e].append([DOWN[e][0] * a, DOWN[e][1] * a])
    stats = LayerStats(0, 3, 2)
    stats.update(
        torch.tensor(probs, dtype=torch.float64),
        torch.tensor(weights, dtype=torch.float64),
        torch.tensor(indices),
        torch.tensor(outputs, dtype=torch.float64),
    )
    return stats


def test_hooks_record_router_and_every_expert_on_every_token() -> None:
    model = hand_model()
    stats = empty_stats(model)
    with attach_stat_hooks(model, get_spec("qwen3_moe"), stats):
        model.model.layers[0].mlp(torch.tensor([X]))
    expected = hand_layer_stats()
    assert sorted(stats.layers) == [0]
    for name in SUM_FIELDS:
        torch.testing.assert_close(
            getattr(stats.layers[0], name), getattr(expected, name), rtol=1e-6, atol=1e-7, msg=name
        )
    assert torch.count_nonzero(stats.layers[0].gram) > 3  # off-diagonal terms: experts ran beyond their top-k


@pytest.mark.parametrize(("outputs_dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_tiny_chunks_give_the_same_statistics(outputs_dtype: torch.dtype, rtol: float) -> None:
    model = hand_model()
    spec = get_spec("qwen3_moe")
    batch = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    results = []
    for max_chunk_bytes in (1, 10**9):  # 1 byte: one token at a time
        stats = empty_stats(model)
        with (
            torch.no_grad(),
            attach_stat_hooks(
                model, spec, stats, outputs_dtype=outputs_dtype, max_chunk_bytes=max_chunk_bytes
            ),
        ):
            model(batch)
        results.append(stats.layers[0])
    for name in SUM_FIELDS:
        torch.testing.assert_close(
            getattr(results[0], name), getattr(results[1], name), rtol=rtol, atol=1e-14
        )
    assert float(results[0].num_tokens) == 10.0


def hook_counts(model: Qwen3MoeForCausalLM) -> tuple[int, int]:
    block = model.model.layers[0].mlp
    return len(block.gate._forward_hooks), len(block.experts._forward_pre_hooks)


def test_hooks_are_removed_after_the_block() -> None:
    model = hand_model()
    stats = empty_stats(model)
    with attach_stat_hooks(model, get_spec("qwen3_moe"), stats):
        assert hook_counts(model) == (1, 1)
        model.model.layers[0].mlp(torch.tensor([X]))
    assert hook_counts(model) == (0, 0)
    model.model.layers[0].mlp(torch.tensor([X]))
    assert float(stats.layers[0].num_tokens) == 3.0


def test_hooks_are_removed_when_the_block_raises() -> None:
    model = hand_model()
    with (
        pytest.raises(RuntimeError, match="boom"),
        attach_stat_hooks(model, get_spec("qwen3_moe"), empty_stats(model)),
    ):
        raise RuntimeError("boom")
    assert hook_counts(model) == (0, 0)


def test_partial_forward_is_an_error_and_still_removes_hooks() -> None:
    model = hand_model()
    with pytest.raises(StatsError, match=r"layer 0 got \['router'\], missing \['experts'\]"):  # noqa: SIM117
        with attach_stat_hooks(model, get_spec("qwen3_moe"), empty_stats(model)):
            model.model.layers[0].mlp.gate(torch.tensor(X))
    assert hook_counts(model) == (0, 0)
