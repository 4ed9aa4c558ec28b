"""The distillation loop: `distill(student, teacher_or_cache, data, config)`.

Per optimizer step s (G = global rows per step, L = sequence length, w = config.ce_weight, T = temperature):
  loss_s = (1 − w) · T² · (1 / (G·L)) Σ_{rows, positions} D(p ‖ q)  +  w · (1 / (G·(L−1))) Σ CE(next token)
with D the configured divergence (forward KL: the paper's Eq. 5). Every process accumulates its share
of the sums over its micro-batches (see `sampling`), scaled by world_size because DDP averages gradients,
so the gradient equals the single-process gradient of the same global batch (DDP and FSDP alike). Then: clip the global grad
norm, AdamW step (fp32 master weights; forward under bf16 autocast where supported, and FSDP's bf16
mixed precision: `distributed`), warmup-cosine lr. Optional activation checkpointing recomputes each
decoder layer in the backward (`config.gradient_checkpointing`, with or without DDP / FSDP).

Metrics logged every `log_every` steps (rank 0): loss, kl (mean forward KL per token at temperature T,
no T² factor; over the k + 1 buckets in cached mode), ce (when w > 0), lr, grad_norm, tokens_per_s.
Params logged once: every config field (distill.*), resolved precision, world size, the run's
config_digest and start_step (0, or the step of the checkpoint resumed from).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from moe2dense_core.data import tokens_digest
from moe2dense_core.distill.checkpointing import (
    TrainerPosition,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    read_run_identity,
    save_checkpoint,
)
from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.distill.distributed import (
    DistributedContext,
    all_reduce_sum,
    as_float,
    gradient_sync,
    setup_distributed,
    wrap_student,
)
from moe2dense_core.distill.expanded_routing import check_teacher_top_k
from moe2dense_core.distill.losses import divergence_sum, next_token_ce_sum
from moe2dense_core.distill.precision import autocast, resolve_precision
from moe2dense_core.distill.run_identity import check_resumable, run_identity
from moe2dense_core.distill.sampling import step_micro_batches
from moe2dense_core.distill.schedule import warmup_cosine_scheduler
from moe2dense_core.distill.targets import CachedTeacher, OnlineTeacher, TeacherSource
from moe2dense_core.distill.topk_cache import TopKCache
from moe2dense_core.errors import DistillError
from moe2dense_core.logging import MetricLogger, NullLogger

LOG = logging.getLogger(__name__)
Resume = bool | Literal["extend"]


@dataclass(frozen=True)
class DistillResult:
    """What a run ended with: steps done, training tokens seen (global), the last logged metrics, and
    start_step, the step it began at (> 0 when it resumed a checkpoint)."""

    steps: int
    tokens_seen: int
    final_metrics: dict[str, float]
    checkpoint_path: Path | None
    precision: str
    world_size: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    start_step: int = 0


def enable_activation_checkpointing(student: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward (transformers ≥ 5.x name, older fallback)."""
    kwargs = {"use_reentrant": False}
    if hasattr(student, "activation_checkpointing_enable"):
        student.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(student, "gradient_checkpointing_enable"):
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise DistillError(f"{type(student).__name__} supports no activation (gradient) checkpointing")


def _validate_data(data: torch.Tensor, config: DistillConfig, world_size: int, vocab_size: int) -> None:
    if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.dtype not in (torch.int32, torch.int64):
        raise DistillError(
            f"data must be an int tensor of packed rows [N, L]; got {getattr(data, 'shape', data)!r}"
        )
    if data.shape[1] < 2:
        raise DistillError(f"data rows need at least 2 tokens, got L={data.shape[1]}")
    needed = config.sequences_per_step(world_size)
    if data.shape[0] < needed:
        raise DistillError(
            f"data has {data.shape[0]} rows, fewer than one global batch of {needed} "
            f"(micro_batch_size × grad_accum_steps × world_size)"
        )
    if int(data.min()) < 0 or int(data.max()) >= vocab_size:
        raise DistillError(
            f"data token ids must lie in [0, {vocab_size}); got [{int(data.min())}, {int(data.max())}]"
        )


def _teacher_source(
    teacher_or_cache: nn.Module | TopKCache | str | Path,
    data_digest: str,
    config: DistillConfig,
    teacher_digest: str | None,
    precision: str,
    device: torch.device,
) -> tuple[TeacherSource, str, str | None]:
    """(source, its label for the run identity, the teacher digest: the caller's, else a cache's)."""
    if isinstance(teacher_or_cache, nn.Module):
        if config.teacher_top_k is not None:
            check_teacher_top_k(teacher_or_cache, config.teacher_top_k)
        source = OnlineTeacher(
            teacher_or_cache, precision=precision, device=device, top_k=config.teacher_top_k
        )
        return source, "online", teacher_digest
    cache = teacher_or_cache if isinstance(teacher_or_cache, TopKCache) else TopKCache.open(teacher_or_cache)
    cache.check_fits(
        data_digest=data_digest,
        temperature=config.temperature,
        teacher_top_k=config.teacher_top_k,
        teacher_digest=teacher_digest,
    )
    return CachedTeacher(cache, device), cache.label, cache.manifest.teacher_digest


def _checkpoint_to_resume(
    checkpoint_dir: Path | None, resume: Resume, identity: dict[str, Any]
) -> Path | None:
    """The checkpoint this run continues (None: start at step 0), its run identity checked (run_identity).

    resume=False refuses a folder that already holds checkpoints, so two runs never mix in one folder.
    """
    found = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if found is None:
        return None
    if resume is False:
        raise DistillError(
            f"checkpoint_dir {checkpoint_dir} already holds checkpoints (newest {found.name}); pass resume=True "
            "to continue that run, resume='extend' to extend it, or use an empty folder"
        )
    check_resumable(
        read_run_identity(found),
        identity,
        checkpoint=found,
        step=checkpoint_step(found),
        extend=resume == "extend",
    )
    return found


def micro_step(
    model: nn.Module,
    source: TeacherSource,
    rows: torch.Tensor,
    input_ids: torch.Tensor,
    config: DistillConfig,
    *,
    precision: str,
    device: torch.device,
    kd_tokens: int,
    ce_tokens: int,
    world_size: int,
) -> torch.Tensor:
    """Forward + backward of one micro-batch; returns its detached sums [loss, kl, ce] (float64).

    rows [B] index the data, input_ids [B, L] are those rows on `device`; kd_tokens = G·L and
    ce_tokens = G·(L−1) are the global normalisers of the whole optimizer step.
    """
    with autocast(precision, device):
        student_logits = model(input_ids=input_ids, use_cache=False).logits
    teacher_logp, student_logp = source.logprob_pair(rows, input_ids, student_logits, config.temperature)
    kd_sum = divergence_sum(config.loss, teacher_logp, student_logp, jsd_beta=config.jsd_beta)
    loss = (1.0 - config.ce_weight) * config.temperature**2 * kd_sum / kd_tokens
    ce_sum = torch.zeros((), device=device)
    if config.ce_weight > 0:
        ce_sum, _ = next_token_ce_sum(student_logits, input_ids)
        loss = loss + config.ce_weight * ce_sum / ce_tokens
    (loss * world_size).backward()
    with torch.no_grad():
        kl_sum = (
            kd_sum
            if config.loss == "forward_kl"
            else divergence_sum("forward_kl", teacher_logp, student_logp)
        )
    return torch.stack([loss.detach(), kl_sum.detach(), ce_sum.detach()]).double().cpu()


def accumulate_gradients(
    model: nn.Module,
    source: TeacherSource,
    data: torch.Tensor,
    micro_rows: list[torch.Tensor],
    config: DistillConfig,
    *,
    precision: str,
    ctx: DistributedContext,
) -> torch.Tensor:
    """Backward of one optimizer step's micro-batches (this process's rows); returns sums [loss, kl, ce].

    Gradients are synchronised across processes (DDP / FSDP) on the last micro-batch only. After the call,
    every process holds the gradient of the global-batch loss (module docstring).
    """
    global_rows = len(micro_rows) * len(micro_rows[0]) * ctx.world_size
    seq_len = data.shape[1]
    sums = torch.zeros(3, dtype=torch.float64)
    for m, rows in enumerate(micro_rows):
        last = m == len(micro_rows) - 1
        with gradient_sync(model, enabled=last or not ctx.active):
            sums += micro_step(
                model,
                source,
                rows,
                data[rows].to(ctx.device),
                config,
                precision=precision,
                device=ctx.device,
                kd_tokens=global_rows * seq_len,
                ce_tokens=global_rows * (seq_len - 1),
                world_size=ctx.world_size,
            )
    return sums


def distill(
    student: nn.Module,
    teacher_or_cache: nn.Module | TopKCache | str | Path,
    data: torch.Tensor,
    config: DistillConfig,
    *,
    logger: MetricLogger | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: Resume = False,
    student_digest: str | None = None,
    teacher_digest: str | None = None,
) -> DistillResult:
    """Distill `student` (a causal LM returning `.logits`) from a teacher model or a top-k cache.

    data: packed training rows [N, L] (int64, see `data.prepare_token_splits`; never the held-out rows).
    teacher_or_cache: the MoE teacher (run online) or a `TopKCache` / its directory (`write_topk_cache`
    on the same `data`; an online teacher is moved to the student's device and put in eval mode).
    Checkpoints (DCP, see `checkpointing`) go to `checkpoint_dir` every `config.checkpoint_every` steps and
    at the end, each with the run identity (`run_identity`: config fields, global batch, data digest,
    teacher, `teacher_digest` and `student_digest` — the caller's ids of the teacher and of the student's
    starting weights, or None); a run may resume on another number of processes with the same global batch.
    resume=True continues from the newest one there exactly (none there: starts at step 0), refusing a
    checkpoint of another run with an error naming what differs; resume="extend" continues it to a new
    `config.max_steps` (≥ its step), the lr schedule rebuilt for the new total; resume=False refuses a
    folder that already holds checkpoints. Works unchanged under
    torchrun / accelerate launch (config.parallelism: DDP or FSDP; see `distributed`). Trains `student`
    in place (under FSDP its parameters become shards; gather them with `full_training_state`) and
    leaves no `.grad` on its parameters.
    """
    logger = logger or NullLogger()
    if resume not in (False, True, "extend"):
        raise DistillError(f"resume must be False, True or 'extend', got {resume!r}")
    if resume and checkpoint_dir is None:
        raise DistillError(f"resume={resume!r} needs checkpoint_dir")
    if config.checkpoint_every is not None and checkpoint_dir is None:
        raise DistillError("config.checkpoint_every is set but no checkpoint_dir was given")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ctx: DistributedContext = setup_distributed(next(student.parameters()).device)
    vocab_size = int(student.config.vocab_size)
    _validate_data(data, config, ctx.world_size, vocab_size)
    data_digest = tokens_digest(data)
    precision = resolve_precision(config.precision, ctx.device)
    source, teacher_label, teacher_digest = _teacher_source(
        teacher_or_cache, data_digest, config, teacher_digest, precision, ctx.device
    )
    if source.vocab_size != vocab_size:
        raise DistillError(f"student vocab_size {vocab_size} != teacher vocab_size {source.vocab_size}")
    identity = run_identity(
        config,
        world_size=ctx.world_size,
        data_digest=data_digest,
        teacher=teacher_label,
        teacher_digest=teacher_digest,
        student_digest=student_digest,
    )
    found = _checkpoint_to_resume(checkpoint_dir, resume, identity)

    student.to(ctx.device).train()
    if config.gradient_checkpointing:
        enable_activation_checkpointing(student)
    model = wrap_student(student, ctx, config.parallelism, precision)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr  # the schedule's base lr, as in the saved optimizer state
    # No stale .grad (e.g. from an earlier run on this model): loading an optimizer state needs none.
    optimizer.zero_grad(set_to_none=True)
    try:
        return _train(
            model,
            student,
            optimizer,
            params,
            source,
            data,
            config,
            ctx=ctx,
            precision=precision,
            logger=logger,
            checkpoint_dir=checkpoint_dir,
            found=found,
            identity=identity,
        )
    finally:
        optimizer.zero_grad(set_to_none=True)  # free the model-sized gradient block


def _train(
    model: nn.Module,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    source: TeacherSource,
    data: torch.Tensor,
    config: DistillConfig,
    *,
    ctx: DistributedContext,
    precision: str,
    logger: MetricLogger,
    checkpoint_dir: Path | None,
    found: Path | None,
    identity: dict[str, Any],
) -> DistillResult:
    """The optimizer-step loop of `distill` from checkpoint `found` (None: step 0) to config.max_steps."""
    position = TrainerPosition(step=0, data_position=0)
    if found is not None:
        position = load_checkpoint(found, model=student, optimizer=optimizer, ctx=ctx)
        LOG.info("resuming distillation from %s at step %d of %d", found, position.step, config.max_steps)
    start_step = position.step
    scheduler = warmup_cosine_scheduler(
        optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio, start_step=start_step
    )
    if ctx.is_main:
        logger.log_params(
            {f"distill.{k}": v for k, v in config.model_dump().items()}
            | {
                "distill.resolved_precision": precision,
                "distill.world_size": ctx.world_size,
                "distill.config_digest": identity["config_digest"],
                "distill.start_step": start_step,
            }
        )

    num_rows, seq_len = data.shape
    global_rows = config.sequences_per_step(ctx.world_size)
    history: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    saved: Path | None = None
    window_start, window_tokens = time.perf_counter(), 0
    while position.step < config.max_steps:
        micro_rows = step_micro_batches(
            position.data_position,
            num_rows=num_rows,
            micro_batch=config.micro_batch_size,
            accumulation=config.grad_accum_steps,
            world_size=ctx.world_size,
            rank=ctx.rank,
            seed=config.seed,
            shuffle=config.shuffle,
        )
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        sums = accumulate_gradients(model, source, data, micro_rows, config, precision=precision, ctx=ctx)
        max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
        grad_norm = as_float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        scheduler.step()
        position = TrainerPosition(position.step + 1, position.data_position + global_rows)
        window_tokens += global_rows * seq_len

        if position.step % config.log_every == 0 or position.step == config.max_steps:
            loss_sum, kl_sum, ce_sum = all_reduce_sum(sums, ctx).tolist()
            elapsed = time.perf_counter() - window_start
            metrics = {
                "loss": loss_sum,
                "kl": kl_sum / (global_rows * seq_len),
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": window_tokens / max(elapsed, 1e-9),
            }
            if config.ce_weight > 0:
                metrics["ce"] = ce_sum / (global_rows * (seq_len - 1))
            history.append({"step": float(position.step), **metrics})
            if ctx.is_main:
                logger.log_metrics(metrics, step=position.step)
            window_start, window_tokens = time.perf_counter(), 0

        at_interval = config.checkpoint_every is not None and position.step % config.checkpoint_every == 0
        if checkpoint_dir is not None and (at_interval or position.step == config.max_steps):
            saved = save_checkpoint(
                checkpoint_dir,
                model=student,
                optimizer=optimizer,
                position=position,
                identity=identity,
                keep=config.keep_checkpoints,
                ctx=ctx,
            )
    if checkpoint_dir is not None and saved is None:
        saved = latest_checkpoint(checkpoint_dir)
    return DistillResult(
        steps=position.step,
        tokens_seen=position.data_position * seq_len,
        final_metrics=metrics,
        checkpoint_path=saved,
        precision=precision,
        world_size=ctx.world_size,
        history=history,
        start_step=start_step,
    )
