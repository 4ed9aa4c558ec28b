"""Distillation throughput, printed as ratios against baselines run side by side (not a test).

1. `distill()` vs a minimal hand-written PyTorch loop (same student, teacher, rows, batch, AdamW,
   autocast, clipping, forward KL): tokens/s ratio, goal ≥ 0.9.
2. `distill()` reading a top-k cache vs `distill()` running the teacher online, with a teacher whose
   forward costs ≥ 4× the student's training step: tokens/s ratio, goal ≥ 1.5 (the cache is written
   beforehand; its write time is printed, not counted).

Runs alternate A, B, A, B, … and report medians, since the machine may be shared.
    PYTHONPATH=. .venv/bin/python bench/distill_throughput.py [--device cuda] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe2dense_core.distill import DistillConfig, distill, resolve_precision, write_topk_cache
from moe2dense_core.distill.precision import autocast


def make_student(vocab: int, hidden: int, layers: int, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 32,
            num_key_value_heads=max(1, hidden // 64),
            head_dim=32,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
    )


def make_teacher(vocab: int, hidden: int, layers: int, seed: int) -> Qwen3MoeForCausalLM:
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            moe_intermediate_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 32,
            num_key_value_heads=max(1, hidden // 64),
            head_dim=32,
            num_experts=8,
            num_experts_per_tok=2,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
    ).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: torch.Tensor,
    config: DistillConfig,
    precision: str,
    device: torch.device,
) -> None:
    """The minimal loop a researcher would write: same rows in the same order, same optimizer and clipping."""
    student.to(device).train()
    teacher.to(device).eval()
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed))
    batch = config.micro_batch_size
    for step in range(config.max_steps):
        rows = order[(step * batch) % len(data) :][:batch]
        ids = data[rows].to(device)
        with torch.no_grad(), autocast(precision, device):
            teacher_logits = teacher(input_ids=ids, use_cache=False).logits
        with autocast(precision, device):
            student_logits = student(input_ids=ids, use_cache=False).logits
        loss = (
            F.kl_div(
                F.log_softmax(student_logits.float(), -1),
                F.log_softmax(teacher_logits.float(), -1),
                log_target=True,
                reduction="sum",
            )
            / ids.numel()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizer.step()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(
    a: Callable[[], None], b: Callable[[], None], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of a and of b over `repeats` alternating runs, after one warm-up of each."""
    timed(a, device)
    timed(b, device)
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(timed(a, device))
        times_b.append(timed(b, device))
    return statistics.median(times_a), statistics.median(times_b)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (the median is reported)")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch rows")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per row")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--student-hidden", type=int, default=128)
    parser.add_argument("--teacher-hidden", type=int, default=512)
    parser.add_argument("--teacher-layers", type=int, default=8)
    parser.add_argument("--topk", type=int, default=64, help="top-k logits kept in the cache (comparison 2)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all", help="which comparison to run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    rows = args.batch * args.steps
    data = torch.randint(0, args.vocab, (rows, args.seq_len), generator=torch.Generator().manual_seed(0))
    config = DistillConfig(
        max_steps=args.steps,
        micro_batch_size=args.batch,
        lr=1e-4,
        precision=args.precision,
        shuffle=True,
        log_every=args.steps,
    )
    tokens = args.steps * args.batch * args.seq_len
    print(
        f"device {device}, precision {precision}, {args.steps} steps × {args.batch} × {args.seq_len} tokens, "
        f"vocab {args.vocab}, threads {torch.get_num_threads()}"
    )

    student = make_student(args.vocab, args.student_hidden, 2, seed=0)
    if args.part in ("1", "all"):  # distill() vs hand-written loop, same models and rows
        teacher = make_teacher(args.vocab, args.student_hidden, 2, seed=1)
        t_loop, t_hand = alternate(
            lambda: distill(student, teacher, data, config),
            lambda: hand_loop(student, teacher, data, config, precision, device),
            args.repeats,
            device,
        )
        print(
            f"[1] distill() {tokens / t_loop:,.0f} tok/s | hand loop {tokens / t_hand:,.0f} tok/s | "
            f"ratio {t_hand / t_loop:.3f} (goal ≥ 0.9)"
        )
    if args.part in ("2", "all"):
        compare_cached_to_online(args, student, data, config, precision, device, tokens)


def compare_cached_to_online(
    args: argparse.Namespace,
    student: torch.nn.Module,
    data: torch.Tensor,
    config: DistillConfig,
    precision: str,
    device: torch.device,
    tokens: int,
) -> None:
    """Cached top-k vs online teacher, with a teacher whose forward costs ≥ 4× the student's step."""
    big_teacher = make_teacher(args.vocab, args.teacher_hidden, args.teacher_layers, seed=2).to(device)
    student.to(device)
    ids = data[: args.batch].to(device)

    def teacher_forward() -> None:
        with torch.no_grad(), autocast(precision, device):
            big_teacher(input_ids=ids, use_cache=False)

    def student_step() -> None:
        with autocast(precision, device):
            logits = student(input_ids=ids, use_cache=False).logits
        logits.float().logsumexp(-1).mean().backward()
        student.zero_grad(set_to_none=True)

    t_teacher, t_student = alternate(teacher_forward, student_step, args.repeats, device)
    cost_ratio = t_teacher / t_student
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_topk_cache(
            big_teacher, data, Path(tmp) / "cache", args.topk, precision=args.precision, batch_size=args.batch
        )
        write_s = time.perf_counter() - start
        t_online, t_cached = alternate(
            lambda: distill(student, big_teacher, data, config),
            lambda: distill(student, Path(tmp) / "cache", data, config),
            args.repeats,
            device,
        )
    print(
        f"[2] teacher forward / student step cost {cost_ratio:.2f}× "
        f"({'≥' if cost_ratio >= 4 else '<'} 4: raise --teacher-hidden/--teacher-layers if below)"
    )
    print(
        f"    online {tokens / t_online:,.0f} tok/s | cached top-{args.topk} {tokens / t_cached:,.0f} tok/s | "
        f"ratio {t_online / t_cached:.3f} (goal ≥ 1.5); cache written in {write_s:.1f} s"
    )


if __name__ == "__main__":
    main()
