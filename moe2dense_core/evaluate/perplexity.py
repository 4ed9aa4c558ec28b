"""Held-out perplexity with a sliding window (stride configurable).

    PPL = exp( (1/N) Σ_t −log p_θ(x_t | x_{<t} within its window) )

over the N = len(stream) − 1 tokens scored by `windows.sliding_windows` [defined here: the
Hugging Face sliding-window recipe; the paper ranks configurations by pre-distillation
perplexity but gives no windowing]. Sums are accumulated in float64. The caller decides about BOS:
pass the stream exactly as the model should see it (e.g. tokenizer output with BOS first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from sys import float_info

import torch

from moe2dense_core.evaluate.model_io import eval_mode, model_device, output_vocab_size
from moe2dense_core.evaluate.windows import as_token_stream, scored_predictions, window_batches


@dataclass(frozen=True)
class PerplexityResult:
    """perplexity = exp(mean_nll); mean_nll in nats per scored token."""

    perplexity: float
    mean_nll: float
    num_scored_tokens: int
    window: int
    stride: int


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor | Sequence[int],
    *,
    window: int,
    stride: int,
    batch_size: int = 4,
) -> PerplexityResult:
    """Sliding-window perplexity of a causal LM (any module returning `.logits` [B, T, V]) on one stream.

    token_ids: [N] ids. Windows of equal length are run `batch_size` at a time; the model's
    training mode is restored afterwards.
    """
    ids = as_token_stream(token_ids, vocab_size=output_vocab_size(model), name="token_ids")
    batches = window_batches(
        ids, window=window, stride=stride, batch_size=batch_size, device=model_device(model)
    )
    total_nll = 0.0
    count = 0
    with eval_mode(model), torch.inference_mode():
        for group, inputs in batches:
            logits, targets = scored_predictions(model, inputs, group)
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            total_nll += float(nll.double())
            count += targets.numel()
    mean_nll = total_nll / count
    return PerplexityResult(perplexity_from_nll(mean_nll), mean_nll, count, window, stride)


def perplexity_from_nll(mean_nll: float) -> float:
    """exp(mean NLL); +inf (not an OverflowError) for a diverged model whose mean NLL exceeds ln(max float)."""
    return math.exp(mean_nll) if mean_nll < math.log(float_info.max) else math.inf
