"""Train a small causal LM teacher from scratch: BPE tokenizer, Qwen3-MoE (or equal-size dense Qwen3), loop.

The honest small-scale stand-in for a released MoE when no hub is reachable. No Prefect here: the task
in `tasks/teacher.py` wraps `train_teacher_model`.

Objective for the MoE [defined here, after STACK.md's measurement that transformers' pooled auxiliary
loss lets experts die]: L = CE(next token) + λ · (1/L) Σ_l B_l, with one Switch-style balance term per
layer computed on that layer's own router logits z_l [T, E]:
    p = softmax(z_l),  P_e = mean_t p_te,  f_e = (1/(T·k)) Σ_t 1[e ∈ top-k(z_l,t)],  B_l = E · Σ_e f_e P_e
(B_l = 1 at perfectly uniform load; Fedus et al. 2021 Eq. 4, generalised to top-k).
The dense teacher has FFN width E·I so its parameter count equals the MoE's up to the routers
(L·E·H weights, ~0.1% here): the dense→dense baseline's teacher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from moe2dense_core.logging import MetricLogger, NullLogger

END_OF_TEXT = "<|endoftext|>"


class TeacherModelConfig(BaseModel):
    """Architecture and training budget of a from-scratch teacher (defaults: the demo's MoE teacher).

    kind: `moe` (Qwen3-MoE, E experts of width I, top-k) or `dense` (Qwen3, FFN width E·I).
    steps × batch_size × seq_len tokens are trained; lr follows linear warmup then cosine to lr/10.
    The defaults (2.05M tokens) [defined here] fit the demo's budget: 0.43 s/step measured on 2 shared
    CPU cores with bf16 autocast, ~7 minutes.
    bf16: autocast matmuls to bfloat16 where the CPU/GPU supports it (fp32 master weights).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["moe", "dense"] = "moe"
    vocab_size: int = Field(default=2048, ge=260)
    hidden_size: int = Field(default=256, ge=8)
    num_layers: int = Field(default=4, ge=1)
    num_heads: int = Field(default=4, ge=1)
    num_kv_heads: int = Field(default=2, ge=1)
    head_dim: int = Field(default=64, ge=2)
    num_experts: int = Field(default=16, ge=1)
    top_k: int = Field(default=4, ge=1)
    expert_width: int = Field(default=128, ge=1)
    seq_len: int = Field(default=256, ge=8)
    batch_size: int = Field(default=8, ge=1)
    steps: int = Field(default=1000, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    balance_coef: float = Field(default=0.01, ge=0)
    bf16: bool = True
    eval_windows: int = Field(default=64, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_and_topk(self) -> TeacherModelConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"teacher.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.top_k > self.num_experts:
            raise ValueError(f"teacher.top_k={self.top_k} exceeds num_experts={self.num_experts}")
        return self


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run achieved: tokens seen, held-out perplexity, final losses, wall time."""

    tokens_trained: int
    heldout_perplexity: float
    final_loss: float
    final_balance: float | None
    seconds: float
    bf16: bool


def train_bpe_tokenizer(documents: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: any text encodes, nothing is <unk>) with one special `<|endoftext|>`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


def encode_documents(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str]) -> torch.Tensor:
    """One token stream [N]: every document followed by `<|endoftext|>`."""
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    stream: list[int] = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


def build_teacher(config: TeacherModelConfig, vocab_size: int) -> nn.Module:
    """A freshly initialised Qwen3-MoE or dense Qwen3 (tied embeddings, seeded by `config.seed`)."""
    torch.manual_seed(config.seed)
    shared = dict(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if config.kind == "dense":
        return Qwen3ForCausalLM(
            Qwen3Config(intermediate_size=config.num_experts * config.expert_width, **shared)
        )
    moe = Qwen3MoeConfig(
        intermediate_size=config.num_experts * config.expert_width,
        moe_intermediate_size=config.expert_width,
        num_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        norm_topk_prob=True,
        router_aux_loss_coef=0.0,
        **shared,
    )
    return Qwen3MoeForCausalLM(moe)


def layer_balance_loss(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """(1/L) Σ_l E · Σ_e f_e P_e over per-layer router logits [T, E] (module docstring)."""
    terms = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        num_experts = probs.shape[-1]
        selected = torch.topk(logits, top_k, dim=-1).indices
        counts = torch.zeros(num_experts, device=logits.device).scatter_add_(
            0, selected.reshape(-1), torch.ones(selected.numel(), device=logits.device)
        )
        fraction = counts / selected.numel()
        terms.append(num_experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(terms).mean()


def bf16_autocast_works(device: torch.device) -> bool:
    """True when a bf16 autocast matmul runs on `device` (fallback: fp32)."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, AssertionError):
        return False
    return True


def learning_rate(step: int, config: TeacherModelConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to lr/10 at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


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
    """Train in place on random windows of `train_ids` [N]; report perplexity on `heldout_ids` [M]."""
    logger = logger or NullLogger()
    window = config.seq_len + 1
    for name, ids in (("train", train_ids), ("held-out", heldout_ids)):
        if ids.numel() < window:
            raise ValueError(
                f"teacher: the {name} stream has {ids.numel()} tokens, fewer than seq_len+1={window}"
            )
    device = next(model.parameters()).device
    use_bf16 = config.bf16 and bf16_autocast_works(device)
    generator = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    started = time.perf_counter()
    loss_value, balance_value = float("nan"), None
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        starts = torch.randint(0, train_ids.numel() - window + 1, (config.batch_size,), generator=generator)
        batch = torch.stack([train_ids[s : s + window] for s in starts.tolist()]).to(device)
        loss, balance = _objective(model, batch, config, use_bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        balance_value = None if balance is None else float(balance.detach())
        if step % log_every == 0 or step == config.steps - 1:
            metrics = {"teacher/loss": loss_value, "teacher/lr": optimizer.param_groups[0]["lr"]}
            if balance_value is not None:
                metrics["teacher/balance"] = balance_value
            logger.log_metrics(metrics, step=step)
        if on_step is not None:
            on_step(step, loss_value)
    seconds = time.perf_counter() - started
    perplexity = heldout_perplexity(model, heldout_ids, config.seq_len, config.eval_windows, use_bf16)
    logger.log_metrics({"teacher/heldout_perplexity": perplexity}, step=config.steps)
    tokens = config.steps * config.batch_size * config.seq_len
    return TrainingSummary(tokens, perplexity, loss_value, balance_value, seconds, use_bf16)


def _objective(
    model: nn.Module, batch: torch.Tensor, config: TeacherModelConfig, use_bf16: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    is_moe = config.kind == "moe"
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = model(batch[:, :-1], output_router_logits=True) if is_moe else model(batch[:, :-1])
    logits = out.logits.float()
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    if not is_moe:
        return loss, None
    balance = layer_balance_loss(out.router_logits, config.top_k)
    return loss + config.balance_coef * balance, balance


@torch.no_grad()
def heldout_perplexity(
    model: nn.Module, ids: torch.Tensor, seq_len: int, max_windows: int, use_bf16: bool
) -> float:
    """exp(mean next-token NLL) over up to `max_windows` consecutive non-overlapping windows of `ids`."""
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, min(ids.numel() - 1, max_windows * seq_len), seq_len):
        chunk = ids[start : start + seq_len + 1].unsqueeze(0).to(device)
        if chunk.shape[1] < 2:
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(chunk[:, :-1]).logits.float()
        total_nll += float(nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
        total_tokens += chunk.shape[1] - 1
    model.train()
    return math.exp(total_nll / total_tokens)
