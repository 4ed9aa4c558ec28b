"""collect_stats: calibration statistics of a teacher over token batches (METHOD.md step 1) [paper].

Two modes, same numbers (tested to agree):
  in_memory       load the teacher with stock `AutoModelForCausalLM.from_pretrained` (no remote code:
                  moe2dense_core.pretrained)
                  — or take a loaded model — and run each batch through it under the stat hooks.
  layer_by_layer  StreamedTeacher: ONE decoder layer's non-expert weights in memory at a time, read from the
                  checkpoint (on `device`: a GPU runs one decoder layer at a time); its routed experts
                  read from disk a block of experts at a time (ExpertBlocks, streamed_experts.py), both
                  for the teacher's own forward and for the all-expert outputs; the embedding matrix
                  never loaded (each batch reads its tokens' rows); every batch advanced through the
                  layer, which is then freed and the checkpoint's memory maps released before the next;
                  the hidden states of all batches are carried from layer to layer in a HiddenStateStore
                  (hidden_store.py), one copy per token, spilled to a memory-mapped temporary file beyond
                  `max_hidden_bytes`. For teachers larger than RAM.

Peak memory of layer_by_layer, as a function of the inputs (on a CPU all of it is RAM; with a GPU
`device` the hidden-state store stays in host RAM, one expert is briefly in host RAM while it is read,
and the other terms, plus one batch's hidden states, are GPU memory):
    peak ≈ baseline + W_rest + R_block + max(O_chunk, A_batch) + min(N·H·s, max_hidden_bytes) + layer args
           + heap slack
  W_rest        the largest decoder layer's NON-expert weights in `dtype` (attention, norms, router, shared
                experts / a dense MLP) plus their checkpoint pages, mapped until the layer is done
  S_block       one block of routed experts in `dtype`, ≤ max_block_bytes in float32 (at least one expert);
                the experts of a layer are never in memory together (streamed_experts.py)
  R_block       a pass over the blocks: the block, one expert's pages (for fused layouts also that expert
                in float32), and in the statistics' pass the contiguous copies of the block's gate and up
                matrices that the all-expert matmuls make (⅔ S_block) — ≈ 2·S_block
  O_chunk       with expert outputs requested: one chunk's all-expert outputs [E, T_chunk, H] and one
                block's outputs and intermediates, ≤ max_chunk_bytes (hooks.py)
  A_batch       the teacher's forward through the layer: one batch's activations [B, T, ·] and the routed
                experts' weighted outputs of its (token, slot) pairs [B·T·k, H]
  N·H·s         the hidden states of all N calibration tokens, s = itemsize of `dtype` (HiddenStateStore:
                beyond the bound they live in page cache, which the kernel reclaims)
  layer args    per batch, the decoder layers' other arguments (rotary tables [1, T, d_head], attention
                masks [B, 1, T, T] for families that build them); the embedding rows of one batch's tokens
                [B, T, H] exist only while its layer inputs are built
  heap slack    memory malloc keeps after the layer's temporaries are freed, given back to the OS after
                every layer (streamed_teacher.trim_free_heap)
in_memory holds the whole teacher instead, and the hidden states of one batch at a time.
Measured (bench-style child process, VmHWM; synthetic Qwen3-30B-A3B checkpoint with 2 decoder layers,
3.74 GB bf16, dtype float32, 2 × 128 tokens, the prune plan's request, 2 threads on a shared machine):
with the defaults (max_block_bytes 64 MiB = 3 experts, 57 MB; max_chunk_bytes 256 MiB = one 128-token
chunk, 134 MB of outputs) the two layers peaked at 0.88 and 0.90 GB over a 0.42 GB baseline, ≈ W_rest
0.11 + R_block 0.12 + O_chunk 0.14 + heap slack ≈ 0.1, and RSS was back at baseline + 0.03 GB after return;
with max_block_bytes 256 MiB (14 experts, R_block 0.47) and max_chunk_bytes 64 MiB, 1.22 GB (0.65 + heap
slack 0.15 over the baseline). Without the trim after
each layer, 0.62 then 0.66 GB stayed resident after the layers. Loading whole layers and the embeddings
instead (the previous design) peaked at 7.0 GB on a 3.5 GB build of this checkpoint (embeddings 1.2 GB
resident, a layer's experts 2.4 GB in float32 from transformers' loader, its 1.2 GB of pages, ≈ 1.6 GB of
conversion transients); pinning glibc's mmap threshold, which that design needed, would lower this peak to
0.78 GB but cost 78 against 59–64 CPU seconds here (every temporary a fresh mapping), process-wide.
Time: the all-expert outputs read every block again for each chunk, and the teacher's forward once per
batch. Reading a layer's 128 experts of that checkpoint from the page cache into the blocks (bf16 →
float32, converted by the copy: spec.read_experts_into) took 0.30–0.34 CPU seconds on one thread (0.53–0.73
when each expert went through a float32 copy first); one 128-token chunk's all-expert arithmetic on that
layer is 155 GFLOP, 1.1–1.2 s at the 127–144 GFLOP/s bench/streaming_convert.py measured on 2 threads: the
reads' share falls as 1 / T_chunk (larger batches and max_chunk_bytes make fewer, longer chunks).

What is collected is `request` (request.py; default everything): a plan needs only what its scorer and
grouper read (`plan.stats_request_for`), and router-only statistics cost little over a forward.
dtype "auto" (or any name) resolves through the project's one precision rule
(moe2dense_core.distill.precision.compute_dtype): bfloat16 only where the device has native bf16, so a
bf16 checkpoint on a CPU without bf16 units runs in float32.
Before anything is read, the memory bounds are checked (memory_bounds.py: chunk and block ≥ 1 byte, hidden
states ≥ 0, where 0 always spills to disk). Before any weight is loaded or any forward runs, a checkpoint
is opened and validated once (checkpoint.open_teacher, headers only; an already opened Teacher is used as
it is) and every batch is checked (2-D integer tensor, ids within the vocabulary).
Data parallel: statistics of disjoint batch shards (processes, GPUs) combine with ExpertStats.merge.
Calibration data and size are not given by the paper [defined here: the caller chooses].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from moe2dense_core.arch import get_spec
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.checkpoint.teacher import Teacher, using_teacher
from moe2dense_core.checkpoint.tokenizer import config_vocab_size
from moe2dense_core.distill.precision import compute_dtype
from moe2dense_core.errors import CheckpointError
from moe2dense_core.pretrained import load_causal_lm
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.hidden_store import HiddenStateStore
from moe2dense_core.stats.hooks import attach_stat_hooks
from moe2dense_core.stats.layer_stats import StatsError
from moe2dense_core.stats.memory_bounds import (
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_HIDDEN_BYTES,
    check_memory_bounds,
)
from moe2dense_core.stats.request import EVERYTHING, StatsRequest
from moe2dense_core.stats.streamed_teacher import StreamedTeacher

Mode = Literal["in_memory", "layer_by_layer"]
ProgressCallback = Callable[[int, int], None]
"""on_progress(done, total): batches (in_memory) or decoder layers (layer_by_layer) finished so far."""


def collect_stats(
    model_dir_or_model: str | Path | Teacher | PreTrainedModel,
    batches: Iterable[torch.Tensor],
    *,
    mode: Mode = "in_memory",
    request: StatsRequest = EVERYTHING,
    dtype: torch.dtype | str = torch.float32,
    outputs_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    max_hidden_bytes: int = DEFAULT_MAX_HIDDEN_BYTES,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    spill_dir: str | Path | None = None,
    revision: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Run the teacher on `batches` (each a LongTensor [B, T] of token ids) and return its ExpertStats.

    model_dir_or_model: a Teacher from `open_teacher` (used as it is, left open), a local checkpoint folder
    or a Hub repo id (opened with open_teacher at `revision`, closed on return), or (in_memory only) a
    loaded transformers MoE model.
    request: which statistics to collect (router statistics always; expert outputs, Gram on request).
    dtype / device: where and in which precision a teacher read from a folder runs (a loaded model runs
    as it is); a name ("auto", "float32", "bfloat16", "float16") goes through precision.compute_dtype.
    outputs_dtype: float32 or float64, the dtype of the all-expert outputs f_e(x) and their per-chunk
    norms and Gram; statistics are always accumulated in float64.
    max_chunk_bytes: bound on the expert outputs and intermediates computed at once (see hooks.py).
    max_hidden_bytes / spill_dir (layer_by_layer): the calibration hidden states beyond this many bytes
    go to a memory-mapped temporary file under spill_dir (see hidden_store.py and the peak formula above;
    0: always).
    max_block_bytes (layer_by_layer): bound on the float32 bytes of one block of routed experts read from
    disk at a time (streamed_experts.py).
    All three are checked first, whatever the mode (StatsError naming the bound: memory_bounds.py).
    on_progress: called as on_progress(done, total) after each batch (in_memory) or each decoder layer
    (layer_by_layer), e.g. to draw a progress bar.
    """
    if mode not in ("in_memory", "layer_by_layer"):
        raise StatsError(f"mode must be 'in_memory' or 'layer_by_layer', got {mode!r}")
    check_memory_bounds(
        max_chunk_bytes=max_chunk_bytes, max_hidden_bytes=max_hidden_bytes, max_block_bytes=max_block_bytes
    )
    hooks = {"outputs_dtype": outputs_dtype, "max_chunk_bytes": max_chunk_bytes}
    if isinstance(model_dir_or_model, nn.Module):
        if mode != "in_memory":
            raise StatsError(
                "mode='layer_by_layer' streams weights from a checkpoint folder; pass its path, not a model"
            )
        model = model_dir_or_model
        config = _config_dict(model.config)
        spec = get_spec(config.get("model_type"))
        batches = validate_batches(batches, config_vocab_size(config, "model.config"))
        return _collect_in_memory(
            model, spec, _empty_stats(spec, config, request), batches, hooks, on_progress
        )
    device = torch.device(device)
    dtype = compute_dtype(dtype, device) if isinstance(dtype, str) else dtype
    with using_teacher(model_dir_or_model, revision) as teacher:
        reader, spec = teacher.reader, teacher.spec
        batches = validate_batches(
            batches, config_vocab_size(reader.config, str(reader.model_dir / "config.json"))
        )
        if mode == "layer_by_layer":
            return collect_layer_by_layer(
                StreamedTeacher(reader, dtype=dtype, device=device, max_block_bytes=max_block_bytes),
                spec,
                batches,
                request=request,
                max_hidden_bytes=max_hidden_bytes,
                spill_dir=spill_dir,
                on_progress=on_progress,
                **hooks,
            )
        model, info = load_causal_lm(
            reader.model_dir, dtype=dtype, device_map=device, output_loading_info=True
        )
        # transformers would run missing parameters randomly initialised: refuse instead
        if info["missing_keys"] or info["mismatched_keys"]:
            raise CheckpointError(
                f"{reader.model_dir}: parameters missing from the checkpoint {sorted(info['missing_keys'])}, "
                f"shape mismatches {sorted(info['mismatched_keys'])}"
            )
        stats = _empty_stats(spec, reader.config, request)
        return _collect_in_memory(model, spec, stats, batches, hooks, on_progress)


def validate_batches(batches: Iterable[torch.Tensor], vocab_size: int) -> list[torch.Tensor]:
    """The batches as a list of int64 tensors [B, T]; StatsError naming the first bad batch otherwise."""
    checked = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, torch.Tensor):
            raise StatsError(f"batch {i}: expected a torch.Tensor of token ids, got {type(batch).__name__}")
        if batch.dtype.is_floating_point or batch.dtype.is_complex or batch.dtype == torch.bool:
            raise StatsError(f"batch {i}: token ids must be an integer tensor, got dtype {batch.dtype}")
        if batch.dim() != 2 or batch.numel() == 0:
            raise StatsError(
                f"batch {i}: expected a non-empty 2-D tensor [B, T], got shape {tuple(batch.shape)}"
            )
        low, high = int(batch.min()), int(batch.max())
        if low < 0 or high >= vocab_size:
            raise StatsError(
                f"batch {i}: token ids span [{low}, {high}], outside the vocabulary [0, {vocab_size - 1}]"
            )
        checked.append(batch.to(torch.long))
    if not checked:
        raise StatsError("no calibration batches given")
    return checked


def _collect_in_memory(
    model: nn.Module,
    spec: MoEArchSpec,
    stats: ExpertStats,
    batches: list[torch.Tensor],
    hooks: dict[str, Any],
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Each batch through the whole model in eval mode (a loaded model's train/eval mode is restored);
    converted expert weights live for one layer call."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), attach_stat_hooks(model, spec, stats, **hooks):
            for done, batch in enumerate(batches, start=1):
                model.base_model(input_ids=batch.to(device), use_cache=False)
                if on_progress is not None:
                    on_progress(done, len(batches))
    finally:
        model.train(was_training)
    return stats


def collect_layer_by_layer(
    teacher: StreamedTeacher,
    spec: MoEArchSpec,
    batches: list[torch.Tensor],
    *,
    request: StatsRequest = EVERYTHING,
    outputs_dtype: torch.dtype = torch.float32,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    max_hidden_bytes: int = DEFAULT_MAX_HIDDEN_BYTES,
    spill_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Layer-by-layer collection on validated batches: embed every batch into one HiddenStateStore, then
    for decoder layer 0 … last MoE layer materialise the layer's non-expert weights on the teacher's
    device, advance every batch's hidden states [B, T, H] through it under the stat hooks (routed experts
    and all-expert outputs from the teacher's expert blocks, read from disk), free it and release the
    checkpoint's memory maps (module docstring: peak memory)."""
    config = teacher.reader.config
    stats = _empty_stats(spec, config, request)
    shapes = [tuple(batch.shape) for batch in batches]
    last_moe = max(spec.dims(config).moe_layers)
    calls = []
    with HiddenStateStore(
        shapes, spec.dims(config).hidden, teacher.dtype, max_ram_bytes=max_hidden_bytes, spill_dir=spill_dir
    ) as store:
        for b, batch in enumerate(batches):
            embedded, batch_calls = teacher.layer_inputs(batch)
            store.put(b, embedded)
            calls.append(batch_calls)
        del embedded
        with (
            torch.no_grad(),
            attach_stat_hooks(
                teacher.model,
                spec,
                stats,
                outputs_dtype=outputs_dtype,
                max_chunk_bytes=max_chunk_bytes,
                expert_source=teacher.expert_blocks,
            ),
        ):
            for index in range(last_moe + 1):
                with teacher.materialised_layer(index) as layer:
                    for b, batch_calls in enumerate(calls):
                        args, kwargs = batch_calls[index]
                        store.put(b, layer(store.get(b).to(teacher.device), *args, **kwargs))
                if on_progress is not None:
                    on_progress(index + 1, last_moe + 1)
    return stats


def _empty_stats(spec: MoEArchSpec, config: dict[str, Any], request: StatsRequest) -> ExpertStats:
    dims = spec.dims(config)
    return ExpertStats(
        config=config,
        model_type=spec.model_type,
        num_experts=dims.num_experts,
        top_k=dims.top_k,
        collected=request,
    )


def _config_dict(config: Any) -> dict[str, Any]:
    """config.json-like dict of a loaded model's config, with attribute-map aliases filled in (transformers
    5 stores e.g. Qwen3-MoE's `num_experts` as `num_local_experts`; specs read the released names)."""
    data = config.to_dict()
    data.update({alias: getattr(config, alias) for alias in getattr(config, "attribute_map", {})})
    return data
