"""Knowledge-distillation throughput and model FLOPs utilisation (MFU) of `distill()` on one GPU (not a test).

A Qwen3 student of ≥ 100M parameters (default: hidden 768, 12 layers, FFN 3072, vocab 32,000 → ~136M)
trains from a top-k teacher-logit cache (the teacher is never resident, as in the pipeline's cached
mode), in the precision the library's rule picks (bf16 where native). Side by side in the same process,
alternating A, B, A, B and reporting medians: `distill()` vs the minimal hand-written loop over the same
cache rows (same student, optimizer, clipping), so the ratio says what the library costs.

Model FLOPs per trained token [defined here, the usual convention of Chinchilla / PaLM appendix B]:
    F = 6·N_matmul + 12·L·d·T
N_matmul = parameters that take part in a matmul (all but the embedding table and the norms; the
untied LM head counts), L = layers, d = hidden size (attention width heads·head_dim), T = sequence
length; the second term is attention's QKᵀ and AV (forward + backward, no causal discount).
MFU = F · tokens/s / peak, peak = the device's dense bf16 (or fp32) FLOP/s: from `--peak-tflops`, or a
table of known GPUs (H100/H200 SXM 989 TFLOP/s bf16, A100 312); unknown device → MFU "n/a". Goal ≥ 40%.

    PYTHONPATH=. .venv/bin/python bench/distill_mfu.py --device cuda            # the real measurement
    PYTHONPATH=. .venv/bin/python bench/distill_mfu.py --device cpu --tiny      # a seconds-long smoke run
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
from transformers import Qwen3Config, Qwen3ForCausalLM

from moe2dense_core.distill import DistillConfig, TopKCache, distill, resolve_precision, write_topk_cache
from moe2dense_core.distill.losses import topk_bucket_logprobs
from moe2dense_core.distill.precision import autocast

PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
}
"""Dense peak TFLOP/s by GPU model (NVIDIA data sheets, SXM parts, no sparsity)."""


def make_student(vocab: int, hidden: int, layers: int, ffn: int) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=max(1, hidden // 256),
            head_dim=64,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
        )
    )


def flops_per_token(model: Qwen3ForCausalLM, seq_len: int) -> float:
    """F = 6·N_matmul + 12·L·d·T (module docstring)."""
    config = model.config
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention_width = config.num_attention_heads * config.head_dim
    return 6.0 * n_matmul + 12.0 * config.num_hidden_layers * attention_width * seq_len


def peak_flops(device: torch.device, precision: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for model, peaks in PEAK_TFLOPS.items():
        if model in name:
            return peaks["bf16" if precision == "bf16" else "fp32"] * 1e12
    return None


def hand_loop(
    student: torch.nn.Module,
    cache: TopKCache,
    data: torch.Tensor,
    config: DistillConfig,
    precision: str,
    device: torch.device,
) -> None:
    """Forward KL against the cached top-k buckets, the minimal way: same rows, optimizer and clipping."""
    student.to(device).train()
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    batch = config.micro_batch_size
    vocab = cache.manifest.vocab_size
    for step in range(config.max_steps):
        targets = cache.rows(torch.arange(step * batch, (step + 1) * batch))
        with autocast(precision, device):
            logits = student(input_ids=targets.input_ids.to(device), use_cache=False).logits
        teacher_buckets, student_buckets = topk_bucket_logprobs(
            F.log_softmax(logits.float(), -1),
            targets.topk_ids.to(device).long(),
            targets.topk_logprobs.to(device).float(),
            targets.tail_logprob.to(device).float(),
            vocab,
        )
        loss = (
            F.kl_div(student_buckets, teacher_buckets, log_target=True, reduction="sum")
            / logits.shape[:2].numel()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizer.step()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, TFLOP/s")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tiny student)")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.repeats, args.batch, args.seq_len = 2, 1, 2, 64
        args.vocab, args.hidden, args.layers, args.ffn = 512, 128, 2, 256
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    student = make_student(args.vocab, args.hidden, args.layers, args.ffn)
    params = sum(p.numel() for p in student.parameters())
    rows = args.batch * args.steps
    data = torch.randint(0, args.vocab, (rows, args.seq_len), generator=torch.Generator().manual_seed(0))
    config = DistillConfig(
        max_steps=args.steps,
        micro_batch_size=args.batch,
        lr=1e-4,
        precision="auto",
        shuffle=False,
        log_every=args.steps,
        gradient_checkpointing=False,
    )
    teacher = make_student(args.vocab, args.hidden // 2, 2, args.ffn // 2).eval()  # only writes the cache
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "cache"
        write_topk_cache(
            teacher.to(device), data, cache_dir, args.topk, precision="auto", batch_size=args.batch
        )
        del teacher
        cache = TopKCache.open(cache_dir)
        student.to(device)
        runs = {
            "distill()": lambda: distill(student, cache_dir, data, config),
            "hand loop": lambda: hand_loop(student, cache, data, config, precision, device),
        }
        for fn in runs.values():
            timed(fn, device)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                seconds[name].append(timed(fn, device))
    tokens = args.steps * args.batch * args.seq_len
    per_token = flops_per_token(student, args.seq_len)
    peak = peak_flops(device, precision, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, precision {precision}, student {params / 1e6:.1f}M parameters, "
        f"{args.steps} steps × {args.batch} × {args.seq_len} tokens, top-{args.topk} cache"
    )
    print(f"{'loop':<10} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>7}")
    for label, times in seconds.items():
        rate = tokens / statistics.median(times)
        mfu = "n/a" if peak is None else f"{rate * per_token / peak:.1%}"
        print(f"{label:<10} {rate:>12,.0f} {rate * per_token / 1e12:>9.2f} {mfu:>7}")
    ratio = statistics.median(seconds["hand loop"]) / statistics.median(seconds["distill()"])
    print(f"distill() / hand loop throughput ratio {ratio:.3f} (goal ≥ 0.9); MFU goal ≥ 40% (bf16, GPU)")


if __name__ == "__main__":
    main()
