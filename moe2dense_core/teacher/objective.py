"""The teacher's training objective: next-token cross-entropy plus per-layer load balancing (MoE).

[defined here, after STACK.md's measurement that transformers' pooled auxiliary loss lets experts die]
    L = CE(next token) + λ · (1/L) Σ_l B_l
with one Switch-style balance term per layer on that layer's own router logits z_l [T, E]:
    p = softmax(z_l),  P_e = mean_t p_te,  f_e = (1/(T·k)) Σ_t 1[e ∈ top-k(z_l,t)],  B_l = E · Σ_e f_e P_e
(B_l = 1 at perfectly uniform load; Fedus et al. 2021 Eq. 4, generalised to top-k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moe2dense_core.distill.precision import autocast
from moe2dense_core.teacher.config import TeacherModelConfig


def layer_balance_loss(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """(1/L) Σ_l E · Σ_e f_e P_e over per-layer router logits [T, E] (module docstring); a scalar."""
    terms = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        num_experts = probs.shape[-1]
        selected = torch.topk(logits, top_k, dim=-1).indices
        counts = torch.zeros(num_experts, device=logits.device).scatter_add_(
            0, selected.reshape(-1), torch.ones(selected.numel(), device=logits.device)
        )
        fraction = counts / selected.numel()
        terms.append(num_experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(terms).mean()


def teacher_objective(
    model: nn.Module, batch: torch.Tensor, config: TeacherModelConfig, precision: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(L, mean B_l or None for the dense teacher) on batch [B, T+1]: inputs batch[:, :-1], targets
    batch[:, 1:]; the forward runs under the resolved `precision` ("bf16" or "fp32"), the loss in fp32."""
    is_moe = config.kind == "moe"
    with autocast(precision, batch.device):
        out = model(batch[:, :-1], output_router_logits=True) if is_moe else model(batch[:, :-1])
    logits = out.logits.float()
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    if not is_moe:
        return loss, None
    balance = layer_balance_loss(out.router_logits, config.top_k)
    return loss + config.balance_coef * balance, balance
