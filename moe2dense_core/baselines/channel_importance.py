"""Minitron-style activation importance of FFN channels and hidden (embedding) channels, one calibration pass.

[defined here, after Minitron (Muralidharan et al., 2024); METHOD.md "Baselines"], over the N
calibration tokens x_t, accumulated in float64:

  ffn[l][j]  = (1/N) Σ_t | act(W_gate,l x_t)_j · (W_up,l x_t)_j |       FFN channel j of layer l: the
                                                                        magnitude of down_proj's input
  hidden[i]  = Σ_{norms n} (1/N) Σ_t | RMSNorm_n(x_t)_i |                hidden channel i, summed over every
                                                                        RMSNorm output (2 per layer + final)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from moe2dense_core.errors import Moe2DenseError


@dataclass(frozen=True)
class ChannelImportance:
    """ffn: one [I] float64 tensor per layer; hidden: [H] float64; tokens: N."""

    ffn: list[torch.Tensor]
    hidden: torch.Tensor
    tokens: int


def channel_importance(model: torch.nn.Module, calib_batches: Iterable[torch.Tensor]) -> ChannelImportance:
    """Run calib_batches (integer token tensors [B, T], packed, no padding) through a Llama-style model.

    The model's training mode is restored and its hooks removed whatever happens.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    device = next(model.parameters()).device
    layers = model.model.layers
    ffn_sums = [
        torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64, device=device) for layer in layers
    ]
    norms = [m for layer in layers for m in (layer.input_layernorm, layer.post_attention_layernorm)] + [
        model.model.norm
    ]
    hidden_sum = torch.zeros(model.config.hidden_size, dtype=torch.float64, device=device)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with _accumulating_hooks(layers, ffn_sums, norms, hidden_sum), torch.inference_mode():
            for i, batch in enumerate(calib_batches):
                if not isinstance(batch, torch.Tensor) or batch.dim() != 2 or batch.is_floating_point():
                    raise Moe2DenseError(
                        f"calib_batches[{i}]: expected an integer token tensor [B, T], got {_describe(batch)}"
                    )
                if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= vocab):
                    raise Moe2DenseError(f"calib_batches[{i}]: token ids outside the vocabulary [0, {vocab})")
                model(input_ids=batch.to(device))
                tokens += batch.numel()
    finally:
        model.train(was_training)
    if tokens == 0:
        raise Moe2DenseError("calib_batches: no calibration tokens; importance needs at least one batch")
    return ChannelImportance([s / tokens for s in ffn_sums], hidden_sum / tokens, tokens)


def _abs_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over all leading dimensions of |x| [..., C] → [C] float64."""
    return x.detach().abs().reshape(-1, x.shape[-1]).sum(0, dtype=torch.float64)


@contextmanager
def _accumulating_hooks(
    layers: torch.nn.ModuleList,
    ffn_sums: list[torch.Tensor],
    norms: list[torch.nn.Module],
    hidden_sum: torch.Tensor,
) -> Iterator[None]:
    def ffn_hook(index: int):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            ffn_sums[index] += _abs_sum(args[0])

        return hook

    def norm_hook(_module: torch.nn.Module, _args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        hidden_sum.add_(_abs_sum(output))

    handles = [layer.mlp.down_proj.register_forward_pre_hook(ffn_hook(i)) for i, layer in enumerate(layers)]
    handles += [norm.register_forward_hook(norm_hook) for norm in norms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__
