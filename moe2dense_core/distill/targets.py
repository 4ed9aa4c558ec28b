"""Where the teacher's distribution comes from: the teacher run online, or a top-k cache on disk.

Both give, for a micro-batch of rows, the pair (log p, log q) over one support, ready for any
divergence in `losses`: the full vocabulary online; the teacher's top-k ids plus one tail bucket
from a cache (`losses.topk_bucket_logprobs`, [defined here]). The teacher side is always finite
(−inf clamped to the lowest float), as `losses.divergence_sum` needs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from moe2dense_core.distill.expanded_routing import expanded_teacher_routing
from moe2dense_core.distill.losses import finite_logprobs_, temperature_logprobs, topk_bucket_logprobs
from moe2dense_core.distill.precision import autocast
from moe2dense_core.distill.topk_cache import TopKCache
from moe2dense_core.errors import DistillError


class TeacherSource(Protocol):
    vocab_size: int

    def logprob_pair(
        self, rows: torch.Tensor, input_ids: torch.Tensor, student_logits: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher log p [B, L, S], student log q [B, L, S]) for rows `rows` [B] of the data."""
        ...


class OnlineTeacher:
    """Runs the teacher (eval mode, no grad, same autocast as the student, optional k' routing)."""

    def __init__(
        self, teacher: nn.Module, *, precision: str, device: torch.device, top_k: int | None
    ) -> None:
        self.teacher = teacher.to(device).eval()
        self.precision = precision
        self.device = device
        self.top_k = top_k
        self.vocab_size = int(teacher.config.vocab_size)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher logits [B, L, V] for input_ids [B, L]."""
        with expanded_teacher_routing(self.teacher, self.top_k), autocast(self.precision, self.device):
            return self.teacher(input_ids=input_ids, use_cache=False).logits

    def logprob_pair(
        self, rows: torch.Tensor, input_ids: torch.Tensor, student_logits: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_logp = finite_logprobs_(temperature_logprobs(self.logits(input_ids), temperature))
        return teacher_logp, temperature_logprobs(student_logits, temperature)


class CachedTeacher:
    """Reads the teacher's top-k log-probabilities of each row from a `TopKCache`."""

    def __init__(self, cache: TopKCache, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        self.vocab_size = cache.manifest.vocab_size

    def logprob_pair(
        self, rows: torch.Tensor, input_ids: torch.Tensor, student_logits: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if temperature != self.cache.manifest.temperature:
            raise DistillError(
                f"cache {self.cache.location} holds log-probabilities at T={self.cache.manifest.temperature}, "
                f"not T={temperature}"
            )
        cached = self.cache.rows(rows).to(self.device)
        if not torch.equal(cached.input_ids, input_ids):
            raise DistillError(f"cache {self.cache.location} rows {rows.tolist()[:4]}… hold other tokens")
        teacher_logp, student_logp = topk_bucket_logprobs(
            temperature_logprobs(student_logits, temperature),
            cached.topk_ids,
            cached.topk_logprobs,
            cached.tail_logprob,
            self.vocab_size,
        )
        return finite_logprobs_(teacher_logp), student_logp
