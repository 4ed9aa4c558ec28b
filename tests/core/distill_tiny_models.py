"""Tiny teachers, students, tokenizer and token rows for the distillation tests (built in-process).

Teacher: Qwen3-MoE, hidden 64, 2 layers, 8 experts top-2, expert width 32, vocab 256.
Student: dense Qwen3 with the same attention and an FFN of width k·I = 64, made like the paper's
conversion with `prune` grouping and `uniform` scaling: the teacher's non-expert weights copied, the
chosen experts' gate/up rows stacked and their down columns concatenated, scaled by 1/k.
"""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

VOCAB = 256
EOS_ID = 0


def tiny_teacher(seed: int = 0, *, vocab_size: int = VOCAB) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return Qwen3MoeForCausalLM(config).eval()


def dense_student_from_teacher(
    teacher: Qwen3MoeForCausalLM, experts: list[int] | None = None
) -> Qwen3ForCausalLM:
    """Copy attention / norms / embeddings; FFN = concatenation of `experts` (default the first k), × 1/k."""
    cfg = teacher.config
    k = cfg.num_experts_per_tok
    chosen = experts if experts is not None else list(range(k))
    width = cfg.moe_intermediate_size
    student_cfg = Qwen3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=len(chosen) * width,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=getattr(cfg, "rope_theta", 10000.0),
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    student = Qwen3ForCausalLM(student_cfg)
    teacher_state = teacher.state_dict()
    state = {name: teacher_state[name].clone() for name in student.state_dict() if name in teacher_state}
    for layer in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp"
        gate_up = teacher_state[f"{prefix}.experts.gate_up_proj"][chosen]  # [k, 2I, H]
        down = teacher_state[f"{prefix}.experts.down_proj"][chosen]  # [k, H, I]
        state[f"{prefix}.gate_proj.weight"] = gate_up[:, :width].reshape(-1, cfg.hidden_size)
        state[f"{prefix}.up_proj.weight"] = gate_up[:, width:].reshape(-1, cfg.hidden_size)
        state[f"{prefix}.down_proj.weight"] = torch.cat(list(down), dim=1) / k
    student.load_state_dict(state, strict=True)
    return student


def random_rows(num_rows: int, seq_len: int, *, vocab_size: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (num_rows, seq_len), generator=torch.Generator().manual_seed(seed))


class ByteTokenizer:
    """UTF-8 bytes as ids 1..255 (NUL bytes dropped), EOS = 0: the callable shape of a HF tokenizer."""

    eos_token_id = EOS_ID

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        return {"input_ids": [[b for b in t.encode("utf-8") if b != 0] for t in texts]}


def peaked_teacher(seed: int = 3) -> Qwen3MoeForCausalLM:
    """A tiny teacher whose next-token distributions are as peaked as a trained LM's (mean max p ≈ 0.7)."""
    teacher = tiny_teacher(seed=seed)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)
    return teacher
