"""Train a small causal LM teacher from scratch: tokenizer, model, AdamW loop, held-out perplexity.

The honest small-scale stand-in for a released MoE when no hub is reachable. Everything it needs is
the library's own: the warmup-cosine schedule (`distill.schedule`), the one precision rule
(`distill.precision`: bf16 autocast only where the device has native bf16), the objective
(`teacher.objective`) and the sliding-window perplexity (`evaluate.perplexity`, window seq_len,
stride seq_len/2 as the evaluate stage uses).

Step s (0-based) trains on batch_size windows of seq_len + 1 tokens drawn uniformly (seeded) from
the training stream [N]; AdamW (β = 0.9, 0.95; weight decay on matrices only, not on norms or
biases), gradient norm clipped at 1.0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from moe2dense_core.distill.precision import autocast, resolve_precision
from moe2dense_core.distill.schedule import warmup_cosine_scheduler
from moe2dense_core.errors import TeacherError
from moe2dense_core.evaluate.perplexity import perplexity
from moe2dense_core.logging import MetricLogger, NullLogger
from moe2dense_core.teacher.config import TeacherModelConfig
from moe2dense_core.teacher.model import build_teacher
from moe2dense_core.teacher.objective import teacher_objective
from moe2dense_core.teacher.tokenizer import encode_documents, train_bpe_tokenizer


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run achieved: tokens seen, held-out perplexity, final losses, wall time, and the
    precision the one rule resolved ("bf16" or "fp32")."""

    tokens_trained: int
    heldout_perplexity: float
    final_loss: float
    final_balance: float | None
    seconds: float
    precision: str


@dataclass(frozen=True)
class TrainedTeacher:
    """The trained model (float32 weights), its tokenizer, and the run's summary."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerFast
    summary: TrainingSummary


def train_teacher(
    train_documents: Sequence[str],
    heldout_documents: Sequence[str],
    config: TeacherModelConfig,
    *,
    logger: MetricLogger | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainedTeacher:
    """Tokenizer on `train_documents`, a fresh `build_teacher`, `train_teacher_model`. The precision
    request is checked first, so `precision="bf16"` without native bf16 fails before any work."""
    resolve_precision(config.precision, torch.device("cpu"))
    if not train_documents or not heldout_documents:
        raise TeacherError(
            f"teacher: {len(train_documents)} training and {len(heldout_documents)} held-out documents; "
            "both must be non-empty"
        )
    tokenizer = train_bpe_tokenizer(train_documents, config.vocab_size)
    model = build_teacher(config, len(tokenizer))
    summary = train_teacher_model(
        model,
        encode_documents(tokenizer, train_documents),
        encode_documents(tokenizer, heldout_documents),
        config,
        logger=logger,
        on_step=on_step,
    )
    return TrainedTeacher(model, tokenizer, summary)


def train_teacher_model(
    model: nn.Module,
    train_ids: torch.Tensor,
    heldout_ids: torch.Tensor,
    config: TeacherModelConfig,
    *,
    logger: MetricLogger | None = None,
    on_step: Callable[[int, float], None] | None = None,
    log_every: int = 25,
) -> TrainingSummary:
    """Train `model` in place on random windows of `train_ids` [N] (module docstring), then measure its
    perplexity on the first eval_windows · seq_len tokens of `heldout_ids` [M].

    on_step(s, loss) runs after optimizer step s (0-based); `logger` gets teacher/loss, teacher/lr and
    (MoE) teacher/balance every `log_every` steps and at the last, and teacher/heldout_perplexity."""
    logger = logger or NullLogger()
    window = config.seq_len + 1
    for name, ids in (("train", train_ids), ("held-out", heldout_ids)):
        if ids.numel() < window:
            raise TeacherError(
                f"teacher: the {name} stream has {ids.numel()} tokens, fewer than seq_len+1={window}"
            )
    device = next(model.parameters()).device
    precision = resolve_precision(config.precision, device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _adamw(model, config)
    scheduler = warmup_cosine_scheduler(optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
    model.train()
    started = time.perf_counter()
    loss_value, balance_value = float("nan"), None
    for step in range(config.steps):
        lr = scheduler.get_last_lr()[0]
        starts = torch.randint(0, train_ids.numel() - window + 1, (config.batch_size,), generator=generator)
        batch = torch.stack([train_ids[s : s + window] for s in starts.tolist()]).to(device)
        loss, balance = teacher_objective(model, batch, config, precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        balance_value = None if balance is None else float(balance.detach())
        if step % log_every == 0 or step == config.steps - 1:
            metrics = {"teacher/loss": loss_value, "teacher/lr": lr}
            if balance_value is not None:
                metrics["teacher/balance"] = balance_value
            logger.log_metrics(metrics, step=step)
        if on_step is not None:
            on_step(step, loss_value)
    seconds = time.perf_counter() - started
    with autocast(precision, device):
        heldout = perplexity(
            model,
            heldout_ids[: config.eval_windows * config.seq_len],
            window=config.seq_len,
            stride=max(1, config.seq_len // 2),
            batch_size=config.batch_size,
        )
    logger.log_metrics({"teacher/heldout_perplexity": heldout.perplexity}, step=config.steps)
    return TrainingSummary(
        tokens_trained=config.steps * config.tokens_per_step,
        heldout_perplexity=heldout.perplexity,
        final_loss=loss_value,
        final_balance=balance_value,
        seconds=seconds,
        precision=precision,
    )


def _adamw(model: nn.Module, config: TeacherModelConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or other vectors)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
