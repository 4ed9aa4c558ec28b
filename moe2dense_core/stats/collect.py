"""collect_stats: calibration statistics of a teacher over token batches (METHOD.md step 1) [paper].

Two modes, same numbers (tested to agree):
  in_memory       load the teacher with stock `AutoModelForCausalLM.from_pretrained` (no remote code:
                  moe2dense_core.pretrained)
                  — or take a loaded model — and run each batch through it under the stat hooks.
  layer_by_layer  StreamedTeacher: ONE decoder layer in memory at a time, read from the checkpoint;
                  the hidden states of all batches are carried from layer to layer. For teachers
                  larger than RAM (peak: embeddings + one decoder layer + the N·H hidden states of
                  all N calibration tokens + one batch's activations).
Before any weight is loaded or any forward runs, a checkpoint is opened and validated once
(checkpoint.open_teacher, headers only; an already opened Teacher is used as it is) and every batch is
checked (2-D integer tensor, ids within the vocabulary).
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
from moe2dense_core.errors import CheckpointError
from moe2dense_core.pretrained import load_causal_lm
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.hooks import DEFAULT_MAX_CHUNK_BYTES, attach_stat_hooks
from moe2dense_core.stats.layer_stats import StatsError
from moe2dense_core.stats.streamed_teacher import StreamedTeacher

Mode = Literal["in_memory", "layer_by_layer"]
ProgressCallback = Callable[[int, int], None]
"""on_progress(done, total): batches (in_memory) or decoder layers (layer_by_layer) finished so far."""


def collect_stats(
    model_dir_or_model: str | Path | Teacher | PreTrainedModel,
    batches: Iterable[torch.Tensor],
    *,
    mode: Mode = "in_memory",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    revision: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Run the teacher on `batches` (each a LongTensor [B, T] of token ids) and return its ExpertStats.

    model_dir_or_model: a Teacher from `open_teacher` (used as it is, left open), a local checkpoint folder
    or a Hub repo id (opened with open_teacher at `revision`, closed on return), or (in_memory only) a
    loaded transformers MoE model.
    dtype / device: where and in which precision a teacher read from a folder runs (a loaded model runs
    as it is); statistics are always accumulated in float64.
    max_chunk_bytes: bound on the float64 expert outputs / weights computed at once (see hooks.py).
    on_progress: called as on_progress(done, total) after each batch (in_memory) or each decoder layer
    (layer_by_layer), e.g. to draw a progress bar.
    """
    if mode not in ("in_memory", "layer_by_layer"):
        raise StatsError(f"mode must be 'in_memory' or 'layer_by_layer', got {mode!r}")
    if isinstance(model_dir_or_model, nn.Module):
        if mode != "in_memory":
            raise StatsError(
                "mode='layer_by_layer' streams weights from a checkpoint folder; pass its path, not a model"
            )
        model = model_dir_or_model
        config = _config_dict(model.config)
        spec = get_spec(config.get("model_type"))
        batches = validate_batches(batches, config_vocab_size(config, "model.config"))
        return _collect_in_memory(model, spec, config, batches, max_chunk_bytes, on_progress)
    with using_teacher(model_dir_or_model, revision) as teacher:
        reader, spec = teacher.reader, teacher.spec
        batches = validate_batches(
            batches, config_vocab_size(reader.config, str(reader.model_dir / "config.json"))
        )
        if mode == "layer_by_layer":
            streamed = StreamedTeacher(reader, dtype=dtype, device=device)
            return collect_layer_by_layer(
                streamed, spec, batches, max_chunk_bytes=max_chunk_bytes, on_progress=on_progress
            )
        model, info = load_causal_lm(
            reader.model_dir, dtype=dtype, device_map=torch.device(device), output_loading_info=True
        )
        # transformers would run missing parameters randomly initialised: refuse instead
        if info["missing_keys"] or info["mismatched_keys"]:
            raise CheckpointError(
                f"{reader.model_dir}: parameters missing from the checkpoint {sorted(info['missing_keys'])}, "
                f"shape mismatches {sorted(info['mismatched_keys'])}"
            )
        return _collect_in_memory(model, spec, reader.config, batches, max_chunk_bytes, on_progress)


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
    config: dict[str, Any],
    batches: list[torch.Tensor],
    max_chunk_bytes: int,
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Each batch through the whole model in eval mode (a loaded model's train/eval mode is restored)."""
    stats = _empty_stats(spec, config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), attach_stat_hooks(model, spec, stats, max_chunk_bytes=max_chunk_bytes):
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
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    on_progress: ProgressCallback | None = None,
) -> ExpertStats:
    """Layer-by-layer collection on validated batches: for decoder layer 0 … last MoE layer, materialise
    the layer, advance every batch's hidden states [B, T, H] through it under the stat hooks, free it."""
    config = teacher.reader.config
    stats = _empty_stats(spec, config)
    inputs = [teacher.layer_inputs(batch) for batch in batches]
    hidden = [h for h, _ in inputs]
    calls = [c for _, c in inputs]
    last_moe = max(spec.dims(config).moe_layers)
    with torch.no_grad(), attach_stat_hooks(teacher.model, spec, stats, max_chunk_bytes=max_chunk_bytes):
        for index in range(last_moe + 1):
            with teacher.materialised_layer(index) as layer:
                for b, batch_calls in enumerate(calls):
                    args, kwargs = batch_calls[index]
                    hidden[b] = layer(hidden[b], *args, **kwargs)
            if on_progress is not None:
                on_progress(index + 1, last_moe + 1)
    return stats


def _empty_stats(spec: MoEArchSpec, config: dict[str, Any]) -> ExpertStats:
    dims = spec.dims(config)
    return ExpertStats(
        config=config, model_type=spec.model_type, num_experts=dims.num_experts, top_k=dims.top_k
    )


def _config_dict(config: Any) -> dict[str, Any]:
    """config.json-like dict of a loaded model's config, with attribute-map aliases filled in (transformers
    5 stores e.g. Qwen3-MoE's `num_experts` as `num_local_experts`; specs read the released names)."""
    data = config.to_dict()
    data.update({alias: getattr(config, alias) for alias in getattr(config, "attribute_map", {})})
    return data
