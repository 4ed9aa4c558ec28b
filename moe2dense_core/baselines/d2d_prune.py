"""Dense→dense (D2D) baseline: prune a dense teacher by width to a target parameter count.

[paper: Qwen3-32B pruned to 3.44B, then the same distillation; the pruning method is not given]
[defined here, Minitron-style structured width pruning (METHOD.md "Baselines")]:
  1. one calibration pass scores FFN channels per layer and hidden channels globally by mean
     activation magnitude (channel_importance.py);
  2. optionally, hidden channels are cut to `hidden_size` (the most important kept);
  3. every layer keeps its w most important FFN channels (one w for all layers: the Llama/Qwen
     config has a single intermediate_size), where w is the multiple of width_multiple whose
     parameter count P(w) is closest to target_params. P(w) is linear in w and is counted on the
     meta device from the config, so impossible targets are refused before any weight is read.
Attention heads and depth are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from moe2dense_core.baselines.budget import config_parameter_count, count_parameters
from moe2dense_core.baselines.channel_importance import channel_importance
from moe2dense_core.baselines.width_pruning import prune_ffn_, prune_hidden_
from moe2dense_core.errors import CheckpointError, Moe2DenseError, UnsupportedArchitectureError
from moe2dense_core.pretrained import load_causal_lm, load_config

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Dense families with `model.layers[i].{self_attn,mlp}` Llama layouts and one config.intermediate_size."""

BASELINE_RECORD = "baseline.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


@dataclass(frozen=True)
class D2DPruneResult:
    """What was written: the checkpoint folder, its size and how it was chosen (also in baseline.json)."""

    out_dir: str
    source_dir: str
    target_params: int
    num_params: int
    ffn_width: int
    hidden_size: int
    teacher_ffn_width: int
    teacher_hidden_size: int
    teacher_params: int
    calibration_tokens: int
    importance: str = "Minitron-style mean |activation|: FFN = down_proj input, hidden = RMSNorm outputs"


def d2d_prune(
    model_dir: str | Path,
    calib_batches: Iterable[torch.Tensor],
    target_params: int,
    out_dir: str | Path,
    *,
    width_multiple: int = 1,
    hidden_size: int | None = None,
) -> D2DPruneResult:
    """Prune the dense checkpoint at model_dir to ≈ target_params; write a standard checkpoint to out_dir.

    calib_batches: token id tensors [B, T] (packed, no padding). hidden_size: also cut the hidden
    (embedding) width to this many channels (None: keep it). out_dir must not exist or be empty; it
    receives safetensors + config, the teacher's tokenizer files and baseline.json, written in a
    temporary folder beside it and renamed into place.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: output folder already exists and is not empty")
    config = load_config(model_dir)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{model_dir}: d2d_prune supports model_type {list(SUPPORTED_MODEL_TYPES)}, not {config.model_type!r}"
        )
    teacher_hidden = int(config.hidden_size)
    if hidden_size is not None and not 1 <= hidden_size <= teacher_hidden:
        raise Moe2DenseError(f"hidden_size must be in [1, {teacher_hidden}], got {hidden_size}")
    teacher_params = config_parameter_count(config)
    if target_params >= teacher_params:
        raise Moe2DenseError(f"target_params={target_params:,} is not below the teacher's {teacher_params:,}")
    new_hidden = hidden_size or teacher_hidden
    width = _width_for_target(_with(config, hidden_size=new_hidden), target_params, width_multiple)

    model = load_causal_lm(model_dir, dtype="auto")
    importance = channel_importance(model, calib_batches)
    prune_ffn_(model, [scores.topk(width).indices.sort().values for scores in importance.ffn])
    if new_hidden != teacher_hidden:
        prune_hidden_(model, importance.hidden.topk(new_hidden).indices.sort().values)

    result = D2DPruneResult(
        out_dir=str(out_dir),
        source_dir=str(model_dir),
        target_params=target_params,
        num_params=count_parameters(model),
        ffn_width=width,
        hidden_size=new_hidden,
        teacher_ffn_width=int(config.intermediate_size),
        teacher_hidden_size=teacher_hidden,
        teacher_params=teacher_params,
        calibration_tokens=importance.tokens,
    )
    _write_checkpoint(model, model_dir, out_dir, {"kind": "d2d_prune", "schema_version": 1, **asdict(result)})
    return result


def _with(config, **changes):
    """A copy of a transformers config with fields changed (head_dim pinned when hidden_size changes)."""
    fields = config.to_dict()
    if "hidden_size" in changes and not fields.get("head_dim"):
        fields["head_dim"] = config.hidden_size // config.num_attention_heads
    return config.__class__.from_dict({**fields, **changes})


def _width_for_target(config, target_params: int, width_multiple: int) -> int:
    """The FFN width w (multiple of width_multiple, ≤ config's) with P(w) closest to target; refuses the unreachable."""
    if width_multiple < 1:
        raise Moe2DenseError(f"width_multiple must be ≥ 1, got {width_multiple}")
    full_width = int(config.intermediate_size)
    full_params = config_parameter_count(config)
    floor_params = config_parameter_count(_with(config, intermediate_size=width_multiple))
    where = f"hidden_size {config.hidden_size}"
    if target_params < floor_params:
        raise Moe2DenseError(
            f"target_params={target_params:,} is below {floor_params:,}, the size at FFN width {width_multiple} "
            f"and {where}; width pruning cannot reach it (attention heads, depth and vocabulary are kept)"
        )
    if target_params > full_params:
        raise Moe2DenseError(
            f"target_params={target_params:,} is above {full_params:,}, the size at full FFN width and {where}"
        )
    per_channel = (full_params - floor_params) / (full_width - width_multiple)
    ideal = width_multiple + (target_params - floor_params) / per_channel
    low = max(width_multiple, int(ideal // width_multiple) * width_multiple)
    high = min(low + width_multiple, full_width)
    return min(
        (low, high), key=lambda w: abs(floor_params + (w - width_multiple) * per_channel - target_params)
    )


def _write_checkpoint(model, source_dir: Path, out_dir: Path, record: dict) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, tmp / name)
        (tmp / BASELINE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked on entry)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
