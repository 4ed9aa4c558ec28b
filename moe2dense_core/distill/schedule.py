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
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))
