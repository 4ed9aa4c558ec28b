"""DistillConfig: every knob of the distillation loop, validated before any model is touched.

[paper] forward KL on the logits (METHOD.md step 6, paper Eq. 5), optional expanded teacher
routing k' > k (Eq. 6). [defined here] everything the paper leaves open: AdamW, linear warmup then
cosine decay to `min_lr_ratio · lr`, temperature 1, no cross-entropy term, gradient clipping at 1.0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LossName = Literal["forward_kl", "reverse_kl", "jsd"]
Precision = Literal["auto", "bf16", "fp32"]
Parallelism = Literal["ddp", "fsdp"]


class DistillConfig(BaseModel):
    """Frozen, strict configuration of one distillation run (see the field descriptions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # ---- loss ----------------------------------------------------------------------------------
    loss: LossName = Field("forward_kl", description="KD divergence; forward_kl is the paper's (Eq. 5).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature T of teacher and student.")
    ce_weight: float = Field(
        0.0, ge=0, le=1, description="w in loss = (1 - w)·KD + w·CE(next token) [defined here]."
    )
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="Mixture weight β of the generalised JSD.")
    teacher_top_k: int | None = Field(
        None, ge=1, description="Expanded teacher routing k' (paper Eq. 6); None keeps the teacher's k."
    )

    # ---- batch and schedule ----------------------------------------------------------------------
    max_steps: int = Field(..., ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward, per process.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step, per process.")
    lr: float = Field(1e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to lr over this many steps.")
    weight_decay: float = Field(0.01, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global grad norm; None: no clip.")
    shuffle: bool = Field(True, description="Reshuffle the training sequences every epoch (seeded).")
    seed: int = 0

    # ---- execution -----------------------------------------------------------------------------
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast where the device supports it, else fp32. Params stay fp32."
    )
    gradient_checkpointing: bool = False
    parallelism: Parallelism = Field(
        "ddp",
        description="With world size > 1: ddp (replicas) or fsdp (sharded, for students too big for one GPU).",
    )

    # ---- bookkeeping ---------------------------------------------------------------------------
    log_every: int = Field(1, ge=1, description="Log metrics every this many optimizer steps.")
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept on disk.")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        beta1, beta2 = self.adam_betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        return self

    def sequences_per_step(self, world_size: int) -> int:
        """Global batch G = micro_batch_size · grad_accum_steps · world_size sequences per step."""
        return self.micro_batch_size * self.grad_accum_steps * world_size
