"""Benchmark (not a test): converting a checkpoint far larger than the memory the conversion may use.

Builds a synthetic checkpoint from the released Qwen/Qwen3-30B-A3B config.json (shared data:
real_moe_configs/Qwen__Qwen3-30B-A3B) with fewer decoder layers: the released tensor names and shapes
(checkpoint.expected.teacher_tensor_shapes), the config's dtype (bfloat16), random weights streamed to
disk shard by shard. Then, each in a fresh child process, timed after its imports:
  copy      every shard read and written back with safetensors alone (load_file → save_file → fsync): the
            baseline, run twice before the conversions and again last (ratios use the fastest). Timed until its bytes are on
            the device, as the conversion's are when assemble returns (its shards are written past the page
            cache and fsynced: io/direct_write.py); the time without the fsyncs is printed beside it
  convert   what `convert` does, stage by stage: open_teacher → collect_stats (layer_by_layer, float32,
            256 random tokens, the plan's stats request) → build_plan (do_acp, K = k, prune) →
            assemble (bfloat16 output); the plan is saved
  convert-router  the same with the sf scorer, whose plan needs router statistics only (no expert
            outputs, no Gram: the statistics pass is the teacher's own forward)
  assemble  open_teacher → the teacher's sha256 (once; a pipeline has it recorded) → assemble with that
            plan, alone in a fresh process
Prints, with their goals:
  peak RSS (VmHWM; per stage via /proc/self/clear_refs) / checkpoint size  (goal ≤ 0.25)
  throughput ratio = copy time / conversion time (the same checkpoint bytes in both)  (goal ≥ 0.5),
                     and the ratio against the copy's page-cache-only time
for both conversions and for assembly alone, and how many checkpoint bytes assembly read. do_acp's Gram
needs every expert run on every calibration token (E/k times the routed work, METHOD.md step 1): the
report gives that arithmetic in GFLOP, the float32 matmul rate measured in the same child, and the time
it takes at that rate — a floor no streaming removes.
Everything it makes is removed at the end. --quick builds a ~340 MB checkpoint (2 layers, 12 experts,
vocabulary 4096) instead of the ≥ target-gb one. Run:
    .venv/bin/python bench/streaming_convert.py [--target-gb 4.5] [--quick] [--workdir DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

QWEN3_CONFIG = Path("real_moe_configs") / "Qwen__Qwen3-30B-A3B" / "config.json"
QUICK = {"num_hidden_layers": 2, "num_experts": 12, "vocab_size": 4096}
PLAN_FILE = "plan.json"
SHARD_BYTES = 2 * 1024**3
COPIES_BEFORE = 2
"""The copy runs twice back to back before the conversions and once after; the fastest counts. On this VM
the same copy of the same cached bytes took 2.9-15 s depending on the kernel's memory state (README)."""
CALIBRATION_TOKENS = (2, 128)
"""Calibration batches × tokens per batch (random ids)."""
DISK_FACTOR = 2.6
"""Free disk needed, in checkpoints: the checkpoint, its safetensors copy and the dense output."""


# ---- the synthetic teacher --------------------------------------------------------------------------
def teacher_config(target_gb: float, quick: bool) -> dict:
    """The released config with fewer layers: the fewest that reach `target_gb` (or the --quick sizes)."""
    from moe2dense_core.shared_data import shared_data_dir

    path = shared_data_dir() / QWEN3_CONFIG
    if not path.is_file():
        sys.exit(f"{path} not found: set MOE2DENSE_SHARED_DATA to the shared data folder")
    config = json.loads(path.read_text())
    if quick:
        config.update(QUICK)
    else:
        one_layer = released_layout({**config, "num_hidden_layers": 1, "max_window_layers": 1})
        per_layer = sum(e.nbytes for e in one_layer if e.name.startswith("model.layers.0."))
        outside = sum(e.nbytes for e in one_layer) - per_layer
        config["num_hidden_layers"] = max(1, math.ceil((target_gb * 1e9 - outside) / per_layer))
    config["max_window_layers"] = config["num_hidden_layers"]
    return config


def released_layout(config: dict) -> list:
    """TensorEntry of every tensor of the released checkpoint layout for `config`, in the config's dtype."""
    import torch

    from moe2dense_core.arch import get_spec
    from moe2dense_core.checkpoint.expected import teacher_tensor_shapes
    from moe2dense_core.io import TensorEntry

    spec = get_spec(config["model_type"])
    shapes = teacher_tensor_shapes(config, spec, spec.dims(config), QWEN3_CONFIG.name).required
    dtype = getattr(torch, config["torch_dtype"])
    return [TensorEntry(name, dtype, shape) for name, shape in shapes.items()]


def write_teacher(config: dict, out: Path) -> None:
    """Random weights (norms 1, else N(0, 0.02²)), one tensor in memory at a time."""
    import torch

    from moe2dense_core.io import ShardedCheckpointWriter

    layout = {entry.name: entry for entry in released_layout(config)}
    generator = torch.Generator().manual_seed(0)
    with ShardedCheckpointWriter(out, SHARD_BYTES, layout=layout.values()) as writer:
        for name in writer.order or ():
            entry = layout[name]
            if name.endswith("norm.weight"):
                tensor = torch.ones(entry.shape, dtype=entry.dtype)
            else:
                tensor = (torch.randn(entry.shape, generator=generator) * 0.02).to(entry.dtype)
            writer.add(name, tensor)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---- child processes ----------------------------------------------------------------------------------
def status_bytes(field: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    match = re.search(rf"^{field}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) * 1024


def import_everything() -> None:
    """Load the modules the library imports lazily (transformers' Qwen3 / Qwen3-MoE model classes), so
    neither the baseline RSS nor the stage times include imports."""
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401
    import transformers.models.qwen3_moe.modeling_qwen3_moe  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401

    import moe2dense_core  # noqa: F401


def reset_peak() -> None:
    """Set VmHWM to the current VmRSS (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def child_copy(teacher: Path, out: Path) -> dict:
    """The baseline: every shard through safetensors alone, each written file fsynced — on the device, as the
    conversion's shards are when `assemble` returns (io.direct_write). `cached_seconds` leaves the fsyncs
    out: the copy's clock stopped with its bytes still in the page cache."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    import_everything()
    reset_peak()
    baseline = status_bytes("VmRSS")
    cached = durable = 0.0
    for shard in sorted(teacher.glob("*.safetensors")):
        started = time.perf_counter()
        tensors = load_file(shard)
        save_file(tensors, str(out / shard.name), metadata={"format": "pt"})
        del tensors
        written = time.perf_counter()
        with (out / shard.name).open("rb") as f:
            os.fsync(f.fileno())
        cached += written - started
        durable += time.perf_counter() - started
    return {"seconds": durable, "cached_seconds": cached, "baseline": baseline, "peak": status_bytes("VmHWM")}


class StageTimer:
    """`with timer("name"):` records the stage's wall seconds and peak RSS (VmHWM reset at its start)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        reset_peak()
        started = time.perf_counter()
        yield
        self.stages[name] = {"seconds": time.perf_counter() - started, "peak": status_bytes("VmHWM")}


def matmul_gflops() -> float:
    """float32 GFLOP/s of this process on the all-expert matmul's shape: 16 experts' gate/up [16, 1536,
    2048] times 128 tokens, best of three."""
    import torch

    weights, tokens = torch.randn(16, 1536, 2048), torch.randn(128, 2048)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        torch.einsum("eoh,th->eto", weights, tokens)
        best = min(best, time.perf_counter() - started)
    return 2 * weights.numel() * tokens.shape[0] / best / 1e9


def all_expert_gflop(config: dict, tokens: int) -> float:
    """Every routed expert on every calibration token: layers · E · tokens · 3 matmuls · 2·H·I flops."""
    per_expert = 3 * 2 * config["hidden_size"] * config["moe_intermediate_size"]
    return config["num_hidden_layers"] * config["num_experts"] * tokens * per_expert / 1e9


def child_convert(teacher_dir: Path, out: Path, scoring: str = "do_acp") -> dict:
    """The conversion, stage by stage: wall seconds and peak RSS of each; do_acp's plan is saved beside
    `out` (for the assembly-alone child), and its all-expert arithmetic and the matmul rate reported."""
    import torch

    from moe2dense_core import PlanConfig, assemble, build_plan, collect_stats
    from moe2dense_core.checkpoint import open_teacher
    from moe2dense_core.plan import stats_request_for

    batches, tokens = CALIBRATION_TOKENS
    generator = torch.Generator().manual_seed(0)
    import_everything()
    rate = matmul_gflops() if scoring == "do_acp" else None
    reset_peak()
    baseline = status_bytes("VmRSS")
    timer = StageTimer()
    with timer("open_teacher"):
        teacher = open_teacher(teacher_dir)
    vocab = teacher.config["vocab_size"]
    calibration = [torch.randint(0, vocab, (1, tokens), generator=generator) for _ in range(batches)]
    plan_config = PlanConfig(scoring=scoring, grouping="prune")
    with timer("collect_stats"):  # as convert() calls it
        stats = collect_stats(
            teacher,
            calibration,
            mode="layer_by_layer",
            request=stats_request_for(plan_config),
            dtype=torch.float32,
        )
    with timer("build_plan"):
        plan = build_plan(stats, plan_config, expert_weights=teacher.expert_weights)
    if scoring == "do_acp":
        (out.parent / PLAN_FILE).write_text(plan.model_dump_json())
    with timer("assemble"):
        assemble(teacher, plan, out)
    teacher.close()
    arithmetic = None if rate is None else all_expert_gflop(teacher.config, batches * tokens)
    return {"baseline": baseline, "stages": timer.stages, "gflop": arithmetic, "gflops": rate}


def child_convert_router(teacher_dir: Path, out: Path) -> dict:
    return child_convert(teacher_dir, out, scoring="sf")


def child_assemble(teacher_dir: Path, out: Path) -> dict:
    """Assembly alone, in a fresh process, with the plan the conversion saved."""
    from moe2dense_core import assemble
    from moe2dense_core.checkpoint import open_teacher
    from moe2dense_core.plan import ConversionPlan

    plan = ConversionPlan.model_validate_json((out.parent / PLAN_FILE).read_text())
    import_everything()
    reset_peak()
    baseline = status_bytes("VmRSS")
    timer = StageTimer()
    with timer("open_teacher"):
        teacher = open_teacher(teacher_dir)
    with timer("teacher sha256"):  # done once per snapshot; a pipeline has it recorded already
        teacher.file_digests()
    with timer("assemble"):
        assemble(teacher, plan, out)
    teacher.close()
    return {"baseline": baseline, "stages": timer.stages, "read": sum(teacher.reader.bytes_read.values())}


def warm_page_cache(teacher: Path) -> None:
    """Read every checkpoint file once, so each child starts with the checkpoint in page cache: the kernel may
    reclaim cold file pages between children (on these VMs proactively), and a child that re-reads them from
    disk measured 5× slower in assembly than one that did not."""
    for path in sorted(teacher.iterdir()):
        with path.open("rb") as f:
            while f.read(64 * 2**20):
                pass


def run_child(kind: str, teacher: Path, out: Path, threads: int) -> dict:
    os.sync()  # no earlier write still being flushed slows this child's writes
    warm_page_cache(teacher)
    command = [sys.executable, __file__, "--child", kind, str(teacher), str(out), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{kind} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- report -------------------------------------------------------------------------------------------
def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(size: int, copies: list[dict], convert: dict, router: dict, alone: dict) -> None:
    """Every number with its goal (see module docstring); each goal line names what it measures. The copy
    runs twice before the conversions and once after (this machine's I/O drifts); ratios are against the fastest."""
    copy = min(copies, key=lambda c: c["seconds"])
    cached = min(c["cached_seconds"] for c in copies)
    durable_times = ", ".join(f"{c['seconds']:.1f} s" for c in copies)
    cached_times = ", ".join(f"{c['cached_seconds']:.1f} s" for c in copies)
    print(
        f"checkpoint: {gb(size)} on disk; safetensors copy to the device {durable_times} (page cache only: "
        f"{cached_times}; the last after the conversions), peak RSS {gb(copy['peak'])}"
    )
    titled = (("conversion (do_acp)", convert), ("conversion (sf, router statistics)", router))
    for title, child in (*titled, ("assembly alone", alone)):
        stages = child["stages"]
        seconds = sum(s["seconds"] for s in stages.values())
        peak = max(s["peak"] for s in stages.values())
        print(f"{title} (process baseline RSS after imports {gb(child['baseline'])}):")
        for name, s in stages.items():
            print(f"  {name:<14} {s['seconds']:7.1f} s   peak RSS {gb(s['peak'])}")
        above = (peak - child["baseline"]) / size
        print(
            f"{title}: peak RSS / checkpoint {peak / size:.3f} (goal ≤ 0.25); above the baseline {above:.3f}"
        )
        print(
            f"{title}: throughput vs safetensors copy {copy['seconds'] / seconds:.2f} (goal ≥ 0.5); vs the copy's "
            f"page-cache-only time {cached / seconds:.2f}"
        )
    floor = convert["gflop"] / convert["gflops"]
    print(
        f"do_acp's all-expert arithmetic: {convert['gflop']:.0f} GFLOP, at the measured float32 matmul rate "
        f"{convert['gflops']:.0f} GFLOP/s ≥ {floor:.1f} s (collect_stats took "
        f"{convert['stages']['collect_stats']['seconds']:.1f} s); throughput vs copy bounded by "
        f"{copy['seconds'] / floor:.2f} by that arithmetic alone"
    )
    assembly = alone["stages"]["assemble"]["seconds"]
    print(
        f"assemble with the teacher's digests known: throughput vs safetensors copy {copy['seconds'] / assembly:.2f}"
    )
    print(f"assembly read {gb(alone['read'])} of the checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target-gb", type=float, default=4.5, help="smallest checkpoint size to build")
    parser.add_argument("--quick", action="store_true", help="a ~340 MB checkpoint for a smoke run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where to build")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in each child")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "TEACHER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        kind, teacher, out = args.child
        child = {
            "copy": child_copy,
            "convert": child_convert,
            "convert-router": child_convert_router,
            "assemble": child_assemble,
        }[kind]
        print(json.dumps(child(Path(teacher), Path(out))))
        return

    config = teacher_config(args.target_gb, args.quick)
    size = sum(entry.nbytes for entry in released_layout(config))
    free = shutil.disk_usage(args.workdir).free
    if free < DISK_FACTOR * size:
        sys.exit(f"{args.workdir}: {gb(free)} free, the bench needs {gb(DISK_FACTOR * size)}; pass --workdir")
    work = Path(tempfile.mkdtemp(prefix="moe2dense-streaming-", dir=args.workdir))
    try:
        started = time.perf_counter()
        write_teacher(config, work / "teacher")
        layers, experts = config["num_hidden_layers"], config["num_experts"]
        print(
            f"built {layers} layers × {experts} experts of {QWEN3_CONFIG.parent.name} in {time.perf_counter() - started:.0f} s"
        )
        on_disk = sum(path.stat().st_size for path in (work / "teacher").glob("*.safetensors"))
        copies = []
        for _ in range(COPIES_BEFORE):
            copies.append(run_child("copy", work / "teacher", work / "copy", args.threads))
            shutil.rmtree(work / "copy")
        convert = run_child("convert", work / "teacher", work / "dense", args.threads)
        shutil.rmtree(work / "dense")
        router = run_child("convert-router", work / "teacher", work / "dense-router", args.threads)
        shutil.rmtree(work / "dense-router")
        alone = run_child("assemble", work / "teacher", work / "dense-alone", args.threads)
        shutil.rmtree(work / "dense-alone")
        copies.append(run_child("copy", work / "teacher", work / "copy", args.threads))
        report(on_disk, copies, convert, router, alone)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
