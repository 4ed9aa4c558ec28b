"""How a trained MoE teacher routes: per-layer router entropy and expert load, from one routing pass.

Have the experts specialised, and is the load balanced? [defined here] For layer l, held-out tokens
t = 1..N, router logits z_l(t) [E], p(t) = softmax(z_l(t)), the teacher's top-k set T(t):
    mean router entropy   H_l = (1/N) Σ_t −Σ_e p_e(t) log p_e(t)      nats, in [0, log E]: log E = the
                          router cannot tell experts apart, low = confident (specialised) routing;
    load                  f_{l,e} = (1/(N·k)) Σ_t 1[e ∈ T(t)]          Σ_e f_{l,e} = 1;
    load entropy          H(f_l) = −Σ_e f_{l,e} log f_{l,e}           log E = perfectly balanced;
    max load ratio        E · max_e f_{l,e}                           1 = balanced, E/k = k experts take all.
Specialised and balanced experts show H_l well below log E together with H(f_l) close to log E.

The pass runs the model on non-overlapping windows of `seq_len` tokens with `output_router_logits=True`
(the Qwen3-MoE teacher of `build_teacher`, and any transformers MoE that returns one [tokens, E] logit
tensor per layer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from moe2dense_core.errors import TeacherError


@dataclass(frozen=True)
class LayerRouting:
    """One layer's routing over N tokens (module docstring): H_l, f_l [E], H(f_l), E · max f."""

    layer: int
    mean_router_entropy: float
    load: list[float]
    load_entropy: float
    max_load_ratio: float


@dataclass(frozen=True)
class RoutingProfile:
    """Per-layer routing of a teacher with E experts, top-k, measured on `num_tokens` tokens."""

    num_experts: int
    top_k: int
    num_tokens: int
    layers: list[LayerRouting]

    @property
    def max_entropy(self) -> float:
        """log E: the entropy of a uniform router (and of a perfectly balanced load)."""
        return math.log(self.num_experts)

    def to_dict(self) -> dict:
        return {**asdict(self), "max_entropy": self.max_entropy}


@torch.no_grad()
def routing_profile(model: nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int = 8) -> RoutingProfile:
    """The routing of `model` on the token stream `ids` [N] (int64), cut into ⌊N / seq_len⌋ windows
    [W, seq_len] run `batch_size` at a time; TeacherError before any forward when the stream is shorter
    than one window or the model has no router."""
    config = model.config
    num_experts = getattr(config, "num_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not num_experts or not top_k:
        raise TeacherError(
            f"routing_profile: {type(model).__name__} has no routed experts (config.num_experts)"
        )
    if ids.ndim != 1 or ids.numel() < seq_len:
        raise TeacherError(
            f"routing_profile: ids must be a stream [N] of ≥ seq_len={seq_len} tokens; got {tuple(ids.shape)}"
        )
    windows = ids[: ids.numel() // seq_len * seq_len].reshape(-1, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    entropy_sums: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    for start in range(0, windows.shape[0], batch_size):
        router_logits = model(
            windows[start : start + batch_size].to(device), output_router_logits=True
        ).router_logits
        logits = torch.stack([layer.float().reshape(-1, num_experts) for layer in router_logits])  # [L, T, E]
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1).sum(dim=-1).double().cpu()  # [L]
        chosen = torch.topk(logits, top_k, dim=-1).indices  # [L, T, k]
        hits = torch.zeros(logits.shape[0], num_experts, device=logits.device)
        hits.scatter_add_(
            1, chosen.reshape(logits.shape[0], -1), torch.ones_like(chosen, dtype=hits.dtype).flatten(1)
        )
        entropy_sums = entropy if entropy_sums is None else entropy_sums + entropy
        counts = hits.double().cpu() if counts is None else counts + hits.double().cpu()
    model.train(was_training)
    assert entropy_sums is not None and counts is not None
    num_tokens = windows.numel()
    layers = []
    for layer, (entropy_sum, layer_counts) in enumerate(zip(entropy_sums, counts, strict=True)):
        load = layer_counts / (num_tokens * top_k)
        nonzero = load[load > 0]
        layers.append(
            LayerRouting(
                layer=layer,
                mean_router_entropy=float(entropy_sum / num_tokens),
                load=load.tolist(),
                load_entropy=float(-(nonzero * nonzero.log()).sum()),
                max_load_ratio=float(num_experts * load.max()),
            )
        )
    return RoutingProfile(num_experts=num_experts, top_k=top_k, num_tokens=num_tokens, layers=layers)
