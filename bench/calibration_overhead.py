"""Calibration cost against a forward pass, printed as ratios of runs side by side (not a test).

A Qwen3-MoE-shaped teacher (fp32, built in-process; E/(3I) as in Qwen3-30B-A3B, so the Gram matrix costs
the same share of the all-expert compute) runs the same batches through
  (a) a plain forward                                    model.base_model(ids)
  (b) router-only statistics                             collect_stats(model, batches, request=ROUTER_ONLY)
  (c) all-expert statistics                              collect_stats(model, batches) (everything, float32)
  (d) a forward that also runs every expert on every token (hooks computing f_e(x) for all e, discarded)
  (g) the Gram products of (c) alone                     F Fᵀ with F [E, T·H] float32, once per MoE layer
      and batch as (c) computes them (one chunk per batch at the default bound): (g)/(c) is their share
Goals: b/a ≤ 1.10 (router statistics cost little over the forward), c/d ≤ 1.25 (statistics cost little
over computing what they need). Rounds run a, b, d, c, g, a, b, …; each ratio is the median of its
per-round ratios (its two runs are adjacent, so they share the machine's load at that moment). Times are
CPU seconds of this process (time.process_time), which other processes on a shared machine disturb far
less than wall time; the default is 1 torch thread (with more, CPU seconds add up the threads).
    .venv/bin/python bench/calibration_overhead.py [--quick] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe2dense_core.arch import get_spec
from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.request import ROUTER_ONLY


def make_teacher(
    hidden: int, width: int, experts: int, top_k: int, layers: int, vocab: int
) -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(
        Qwen3MoeConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            moe_intermediate_size=width,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=max(1, hidden // 128),
            head_dim=64,
            num_experts=experts,
            num_experts_per_tok=top_k,
            max_position_embeddings=4096,
        )
    ).eval()


def every_expert_forward(model: Qwen3MoeForCausalLM, batches: list[torch.Tensor]) -> None:
    """(d): the plain forward plus, in every MoE layer, f_e(x) for every expert e on every token."""
    spec = get_spec("qwen3_moe")
    handles = []
    for layer in spec.dims(model.config.to_dict() | {"num_experts": model.config.num_experts}).moe_layers:
        experts = spec.experts_module(model, layer)

        def run_all(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            spec.module_expert_weights(module).forward(x, spec.activation)

        handles.append(experts.register_forward_pre_hook(run_all))
    try:
        plain_forward(model, batches)
    finally:
        for handle in handles:
            handle.remove()


def plain_forward(model: Qwen3MoeForCausalLM, batches: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for batch in batches:
            model.base_model(input_ids=batch, use_cache=False)


def gram_products(outputs: list[torch.Tensor], layers: int) -> None:
    """(g): G = F Fᵀ for each batch's all-expert outputs [E, T, H], in every MoE layer."""
    for _ in range(layers):
        for out in outputs:
            flat = out.reshape(out.shape[0], -1)
            flat @ flat.T


def timed(fn: Callable[[], object]) -> float:
    """CPU seconds of this process spent in fn (module docstring: why not wall time)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> list[dict[str, float]]:
    """Seconds of every run in each of `rounds` rounds (all runs in turn), after one warm-up round."""
    for fn in runs.values():
        fn()
    return [{name: timed(fn) for name, fn in runs.items()} for _ in range(rounds)]


def median_ratio(rounds: list[dict[str, float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio: runs next to each other share the machine's load."""
    return statistics.median(r[numerator] / r[denominator] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller teacher, fewer rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, --quick 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: leave as is; 1 is steadiest on a shared machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = (
        {"hidden": 128, "width": 96, "experts": 16, "top_k": 2, "layers": 2, "vocab": 512}
        if args.quick
        else {"hidden": 256, "width": 192, "experts": 32, "top_k": 4, "layers": 4, "vocab": 2048}
    )
    rows, seq_len, num_batches = (2, 64, 2) if args.quick else (4, 128, 2)
    rounds = args.rounds or (2 if args.quick else 5)
    model = make_teacher(**sizes)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, sizes["vocab"], (rows, seq_len), generator=g) for _ in range(num_batches)]
    print(
        f"Qwen3-MoE teacher {sizes}, fp32, {num_batches} batches × {rows} × {seq_len} tokens, "
        f"threads {torch.get_num_threads()}, {rounds} rounds (medians)"
    )
    outputs = [torch.randn(sizes["experts"], rows * seq_len, sizes["hidden"], generator=g) for _ in batches]
    # each ratio's two runs are adjacent in every round: a, b | d, c, g
    rounds_seconds = interleaved(
        {
            "a": lambda: plain_forward(model, batches),
            "b": lambda: collect_stats(model, batches, request=ROUTER_ONLY),
            "d": lambda: every_expert_forward(model, batches),
            "c": lambda: collect_stats(model, batches),
            "g": lambda: gram_products(outputs, sizes["layers"]),
        },
        rounds,
    )
    labels = {
        "a": "plain forward",
        "b": "router-only statistics",
        "c": "all-expert statistics (with Gram)",
        "d": "forward running every expert on every token",
        "g": "the Gram products of (c) alone",
    }
    for key, label in labels.items():
        times = [r[key] for r in rounds_seconds]
        print(
            f"  ({key}) {label:<46} median {statistics.median(times):7.3f} s   min {min(times):7.3f} s (CPU)"
        )
    b_a, c_d = median_ratio(rounds_seconds, "b", "a"), median_ratio(rounds_seconds, "c", "d")
    gram_flop_share = sizes["experts"] / (3 * sizes["width"] + sizes["experts"])
    print(
        f"b/a = {b_a:.3f} (goal ≤ 1.10, {'met' if b_a <= 1.10 else 'MISSED'}); "
        f"c/d = {c_d:.3f} (goal ≤ 1.25, {'met' if c_d <= 1.25 else 'MISSED'}); "
        f"Gram share of (c) = {median_ratio(rounds_seconds, 'g', 'c'):.1%} (flop estimate of its share of "
        f"the expert-side work 2E²/(6EI + 2E²) = {gram_flop_share:.1%}); "
        "ratios are medians of per-round ratios"
        + (
            "; --quick is a smoke run: per-call fixed costs weigh more than at the default size"
            if args.quick
            else ""
        )
    )


if __name__ == "__main__":
    main()
