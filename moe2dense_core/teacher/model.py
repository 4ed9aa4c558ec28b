"""A freshly initialised teacher: Qwen3-MoE, or the dense Qwen3 of the same size (dense→dense baseline)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe2dense_core.teacher.config import TeacherModelConfig


def build_teacher(config: TeacherModelConfig, vocab_size: int) -> nn.Module:
    """Qwen3-MoE (E experts of width I, top-k, normalised top-k weights, no pooled aux loss) or dense
    Qwen3 with FFN width E·I; tied embeddings, token 0 = BOS/EOS/PAD, weights seeded by `config.seed`.

    Parameter counts differ by the routers only: L·E·H weights."""
    torch.manual_seed(config.seed)
    shared = dict(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if config.kind == "dense":
        return Qwen3ForCausalLM(
            Qwen3Config(intermediate_size=config.num_experts * config.expert_width, **shared)
        )
    moe = Qwen3MoeConfig(
        intermediate_size=config.num_experts * config.expert_width,
        moe_intermediate_size=config.expert_width,
        num_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        norm_topk_prob=True,
        router_aux_loss_coef=0.0,
        **shared,
    )
    return Qwen3MoeForCausalLM(moe)
