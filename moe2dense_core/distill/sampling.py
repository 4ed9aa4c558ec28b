"""Which training rows every process reads at every step: a pure function of (seed, position).

The global stream of row indices is epoch 0's order, then epoch 1's, …; epoch e's order is
`randperm(N, generator seeded with seed + e)` (or 0..N−1 without shuffling). Optimizer step s reads
stream positions [s·G, (s+1)·G), G = micro_batch · accumulation · world_size, laid out as
[accumulation, world_size, micro_batch]: process r's micro-batch m is the slice [m, r, :]. One process
with micro_batch·W rows per micro-batch therefore sees exactly the same rows per micro-step as W
processes together, and resuming at a saved position continues the same stream.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=2)
def epoch_order(num_rows: int, epoch: int, seed: int, shuffle: bool) -> torch.Tensor:
    """Row indices [N] of epoch `epoch` (cached: one permutation per epoch, not per step; do not modify)."""
    if not shuffle:
        return torch.arange(num_rows)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_rows, generator=generator)


def stream_slice(position: int, count: int, num_rows: int, seed: int, shuffle: bool) -> torch.Tensor:
    """Row indices [count] at global stream positions [position, position + count)."""
    pieces: list[torch.Tensor] = []
    while count > 0:
        epoch, offset = divmod(position, num_rows)
        take = min(count, num_rows - offset)
        pieces.append(epoch_order(num_rows, epoch, seed, shuffle)[offset : offset + take])
        position += take
        count -= take
    return torch.cat(pieces)


def step_micro_batches(
    position: int,
    *,
    num_rows: int,
    micro_batch: int,
    accumulation: int,
    world_size: int,
    rank: int,
    seed: int,
    shuffle: bool,
) -> list[torch.Tensor]:
    """This process's micro-batches for the step starting at stream `position`: accumulation × [micro_batch]."""
    rows = stream_slice(position, micro_batch * accumulation * world_size, num_rows, seed, shuffle)
    layout = rows.view(accumulation, world_size, micro_batch)
    return [layout[m, rank] for m in range(accumulation)]
