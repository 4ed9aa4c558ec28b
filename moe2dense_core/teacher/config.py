"""TeacherModelConfig: architecture and training budget of a from-scratch teacher, validated up front.

Defaults [defined here]: the demo's MoE teacher, sized so that the whole `moe2dense demo` (teacher,
conversion, distillation, evaluation) fits 10 minutes on 2 CPU cores in fp32 (README "Two commands").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe2dense_core.distill.config import Precision


class TeacherModelConfig(BaseModel):
    """kind: `moe` (Qwen3-MoE, E = num_experts experts of width I = expert_width, top-k) or `dense`
    (Qwen3, FFN width E·I: the same parameter count up to the routers).

    steps × batch_size × seq_len tokens are trained; the lr follows linear warmup over `warmup_steps`,
    then cosine decay to min_lr_ratio · lr (`moe2dense_core.distill.schedule`). precision: the
    project's one rule (`moe2dense_core.distill.precision`): auto = bf16 autocast only where the device
    has native bf16, fp32 master weights always. Held-out perplexity is measured on
    eval_windows · seq_len tokens.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["moe", "dense"] = "moe"
    vocab_size: int = Field(default=2048, ge=260)
    hidden_size: int = Field(default=192, ge=8)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, ge=1)
    num_kv_heads: int = Field(default=2, ge=1)
    head_dim: int = Field(default=48, ge=2)
    num_experts: int = Field(default=16, ge=1)
    top_k: int = Field(default=4, ge=1)
    expert_width: int = Field(default=128, ge=1)
    seq_len: int = Field(default=256, ge=8)
    batch_size: int = Field(default=8, ge=1)
    steps: int = Field(default=500, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=25, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    balance_coef: float = Field(default=0.01, ge=0)
    precision: Precision = "auto"
    eval_windows: int = Field(default=64, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_and_topk(self) -> TeacherModelConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"teacher.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.top_k > self.num_experts:
            raise ValueError(f"teacher.top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self

    @property
    def tokens_per_step(self) -> int:
        """batch_size · seq_len next-token targets per optimizer step."""
        return self.batch_size * self.seq_len
