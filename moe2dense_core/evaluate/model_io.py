"""Small helpers every evaluator needs: a model's device, output vocabulary and eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from moe2dense_core.errors import Moe2DenseError


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise Moe2DenseError(f"{type(model).__name__} has no parameters") from None


def output_vocab_size(model: torch.nn.Module) -> int:
    """Number of logits per position: the output embedding's rows (config.vocab_size as fallback)."""
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if get_output is not None else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = getattr(model, "config", None)
    if config is None or getattr(config, "vocab_size", None) is None:
        raise Moe2DenseError(
            f"{type(model).__name__}: cannot tell its vocabulary size (no output embedding, no config)"
        )
    return int(config.vocab_size)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """model.eval() inside the block; the previous training flag is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
