"""Sliding windows over one token stream, shared by perplexity and teacher–student KL.

The Hugging Face recipe [defined here as the project's convention; it is the one the shared
data README's tiny1m numbers use]: windows of `window` tokens start every `stride` tokens; each
window scores only the tokens not scored by an earlier window, so every token after the first is
predicted exactly once, each with between `window - stride` and `window - 1` tokens of context.
With stride == window the windows do not overlap and the first token of each is not scored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from moe2dense_core.errors import Moe2DenseError


@dataclass(frozen=True)
class Window:
    """Tokens [begin, end) of the stream; positions [score_from, end - begin) inside it are scored.

    A scored position j predicts token begin + j from the logits at j - 1, so score_from ≥ 1.
    """

    begin: int
    end: int
    score_from: int

    @property
    def length(self) -> int:
        """Tokens in the window, end - begin."""
        return self.end - self.begin


def as_token_stream(token_ids: torch.Tensor | Sequence[int], *, vocab_size: int, name: str) -> torch.Tensor:
    """Validate a 1-D integer stream of ≥ 2 ids in [0, vocab_size) and return it as int64 [N]."""
    ids = torch.as_tensor(token_ids)
    if ids.dim() != 1:
        raise Moe2DenseError(f"{name}: expected a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise Moe2DenseError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.numel() < 2:
        raise Moe2DenseError(f"{name}: needs at least 2 tokens to score one, got {ids.numel()}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise Moe2DenseError(
            f"{name}: token ids span [{low}, {high}], outside the vocabulary [0, {vocab_size})"
        )
    return ids.to(torch.int64)


def sliding_windows(num_tokens: int, *, window: int, stride: int) -> list[Window]:
    """Windows covering a stream of `num_tokens` (see module docstring).

    With stride < window every token after the first is scored exactly once (num_tokens - 1 in all);
    with stride == window the first token of every window is not scored.
    """
    if window < 2:
        raise Moe2DenseError(f"window must be ≥ 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise Moe2DenseError(f"stride must be in [1, window={window}], got {stride}")
    windows: list[Window] = []
    scored_until = 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        score_from = max(1, scored_until - begin)
        if end - begin > score_from:
            windows.append(Window(begin, end, score_from))
        scored_until = end
        if end == num_tokens:
            break
    return windows


def batched(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Groups of at most batch_size windows of equal length (so they stack without padding)."""
    if batch_size < 1:
        raise Moe2DenseError(f"batch_size must be ≥ 1, got {batch_size}")
    group: list[Window] = []
    for w in windows:
        if group and (len(group) == batch_size or group[0].length != w.length):
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def stack_inputs(ids: torch.Tensor, group: list[Window], device: torch.device) -> torch.Tensor:
    """The group's token windows as one [B, T] batch on `device`."""
    return torch.stack([ids[w.begin : w.end] for w in group]).to(device)


def window_batches(
    ids: torch.Tensor, *, window: int, stride: int, batch_size: int, device: torch.device
) -> Iterator[tuple[list[Window], torch.Tensor]]:
    """(group, inputs [B, T] on `device`) for each `batched` group of the `sliding_windows` over ids [N].

    The window and stride are checked now, before the first batch is asked for.
    """
    windows = sliding_windows(ids.numel(), window=window, stride=stride)
    return ((group, stack_inputs(ids, group, device)) for group in batched(windows, batch_size))


def scored_predictions(
    model: torch.nn.Module, inputs: torch.Tensor, group: list[Window]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on inputs [B, T]; per scored token, the predicting logits [S, V] (float32) and target ids [S].

    The model returns `.logits` [B, T, V]; the logits at position j - 1 predict token j.
    """
    logits = model(input_ids=inputs).logits
    rows, targets = [], []
    for b, w in enumerate(group):
        rows.append(logits[b, w.score_from - 1 : w.length - 1])
        targets.append(inputs[b, w.score_from : w.length])
    return torch.cat(rows).float(), torch.cat(targets)
