"""Learning-rate schedule [defined here]: linear warmup, then cosine decay to a floor.

Multiplier of the base lr at optimizer step s (0-based, the step about to be taken), W warmup steps,
S total steps, floor m:
  s < W:  (s + 1) / W
  else:   m + (1 − m) · ½ (1 + cos(π · (s − W) / max(1, S − W)))
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """The multiplier above as a picklable callable (LambdaLR stores its attributes in state_dict)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    *,
    start_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule above, positioned so the next optimizer step is step `start_step` (lr = base · multiplier).

    Base lr = each param group's "initial_lr" (its lr when absent; needed for start_step > 0), so a
    run resumed at step s follows the same lr as one that never stopped — or, with a new
    `total_steps`, the schedule rebuilt for that total.
    """
    schedule = WarmupCosine(warmup_steps, total_steps, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=start_step - 1)
