"""Structured width pruning of a Llama-style dense model, in place: keep chosen FFN or hidden channels.

The mechanics of the dense→dense baseline [defined here, Minitron-style; METHOD.md "Baselines"]; which
channels to keep comes from channel_importance.py.

FFN channels (per layer l, kept set K_l, |K_l| = w):  W_gate, W_up rows K_l; W_down columns K_l.
  Exact: the result equals the original with W_down's other columns zeroed.
Hidden channels (kept set K, shared by every layer): the embedding and LM-head columns K, every
  RMSNorm weight K, q/k/v/gate/up input columns K, o/down output rows K (and their biases).
  Not exact: RMSNorm then normalises over |K| channels; distillation recovers [Minitron].
Attention keeps its heads and head_dim (config.head_dim is pinned so it is no longer derived from
hidden_size / num_attention_heads).
"""

from __future__ import annotations

import torch


def _select(
    linear: torch.nn.Linear, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> None:
    weight = linear.weight.data
    if rows is not None:
        weight = weight[rows]
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data[rows].clone())
        linear.out_features = rows.numel()
    if cols is not None:
        weight = weight[:, cols]
        linear.in_features = cols.numel()
    linear.weight = torch.nn.Parameter(weight.clone())


def prune_ffn_(model: torch.nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep FFN channels keep[l] (ascending indices, same count in every layer); sets config.intermediate_size."""
    for layer, kept in zip(model.model.layers, keep, strict=True):
        mlp = layer.mlp
        _select(mlp.gate_proj, rows=kept)
        _select(mlp.up_proj, rows=kept)
        _select(mlp.down_proj, cols=kept)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = kept.numel()
    model.config.intermediate_size = int(keep[0].numel())


def prune_hidden_(model: torch.nn.Module, keep: torch.Tensor) -> None:
    """Keep hidden channels `keep` (ascending indices) everywhere; sets config.hidden_size and pins head_dim."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    embed = model.model.embed_tokens
    embed.weight = torch.nn.Parameter(embed.weight.data[:, keep].clone())
    embed.embedding_dim = keep.numel()
    for layer in model.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight = torch.nn.Parameter(norm.weight.data[keep].clone())
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _select(linear, cols=keep)
        for linear in (attn.o_proj, mlp.down_proj):
            _select(linear, rows=keep)
    model.model.norm.weight = torch.nn.Parameter(model.model.norm.weight.data[keep].clone())
    if tied:
        model.lm_head.weight = embed.weight
    else:
        _select(model.lm_head, cols=keep)
    config.head_dim = head_dim
    config.hidden_size = int(keep.numel())
