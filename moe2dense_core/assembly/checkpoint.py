"""`assemble`: plan + teacher checkpoint → a standard dense Hugging Face checkpoint, streamed layer by layer.

What is written (DESIGN.md "Assembly"; METHOD.md steps 3-5):
- safetensors shards + model.safetensors.index.json: every non-FFN teacher tensor (attention, norms,
  embeddings, head) copied under `spec.rename_for_dense`; per decoder layer ℓ one dense FFN
  `spec.dense_ffn_tensors(ℓ, ffn)` of the uniform width W = plan.target_width, where
      MoE layer:    ffn = [merged, c_g-scaled group blocks; s-scaled shared experts; zero padding]
                    so dense_ℓ(x) = Σ_g c_g f_g(x) (+ s f_shared(x))          [paper, Eq. 2]
      dense layer:  ffn = the teacher's MLP zero-padded to W (exact)
  Router and routed/shared expert tensors are dropped.
- config.json = spec.dense_config(teacher config, W) with the output dtype; tokenizer files and
  generation_config.json copied; README.md model card; moe2dense.json provenance (provenance.py).

Memory: one layer's K kept experts (float64) plus the writer's current shard — never the whole
teacher. Order of work: validate everything that can be checked from files (the teacher through
`open_teacher`: integrity, every tensor vs config; plan vs checkpoint; output folder) before reading
any expert; write into a staging folder; read the written headers back and check they are exactly the
parameters of the dense model class built from the written config.json (checkpoint/dense.py: nothing
missing, nothing unexpected, every shape right); only then publish the folder by rename (output_dir.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe2dense_core.arch.spec import MoEArchSpec, MoEDims
from moe2dense_core.assembly.layer_ffn import dense_layer_ffn, moe_layer_ffn
from moe2dense_core.assembly.model_card import render_model_card
from moe2dense_core.assembly.output_dir import check_output_dir, staged_output_dir
from moe2dense_core.assembly.plan_check import check_plan_fits
from moe2dense_core.assembly.provenance import PROVENANCE_FILE, AssemblyProvenance, installed_tool_version
from moe2dense_core.checkpoint.dense import check_dense_checkpoint
from moe2dense_core.checkpoint.expected import LAYER_PREFIX
from moe2dense_core.checkpoint.teacher import Teacher, using_teacher
from moe2dense_core.checkpoint.validate import inherited_by_student
from moe2dense_core.errors import CheckpointError, Moe2DenseError
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.writer import ShardedCheckpointWriter
from moe2dense_core.plan import ConversionPlan

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
"""5 GiB per shard, the Hugging Face default for `save_pretrained`."""

COPIED_FILE_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "chat_template*",
    "generation_config.json",
)
"""Tokenizer and generation files copied unchanged from the teacher folder."""


@dataclass(frozen=True)
class AssemblyResult:
    """What `assemble` wrote: the folder, its shard digests, and the provenance record (moe2dense.json)."""

    out_dir: Path
    shard_digests: dict[str, str]
    plan_digest: str
    num_parameters: int
    provenance: AssemblyProvenance


def assemble(
    model_dir: str | Path | Teacher,
    plan: ConversionPlan,
    out_dir: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> AssemblyResult:
    """Write the dense student of `plan` for the teacher at `model_dir` into `out_dir`.

    model_dir: a Teacher from `open_teacher` (used as it is, left open), or a local checkpoint folder / Hub
    id opened with open_teacher(model_dir, revision, allow_pickle) and closed on return.
    dtype: of the written FFN weights (and, when given, of every floating tensor); None = the teacher
    config's `dtype`/`torch_dtype`, teacher non-FFN tensors then keep their stored dtype.
    overwrite: replace a non-empty `out_dir` (only once the new checkpoint is complete).
    Raises CheckpointError / UnsupportedArchitectureError / PlanError / OutputDirError before any
    expert weight is read when the checkpoint, the plan or the output folder is unusable.
    """
    if max_shard_bytes < 1:
        raise Moe2DenseError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    with using_teacher(model_dir, revision, allow_pickle) as teacher:
        return _assemble(teacher, plan, out_dir, max_shard_bytes, dtype, overwrite)


def _assemble(
    teacher: Teacher,
    plan: ConversionPlan,
    out_dir: str | Path,
    max_shard_bytes: int,
    dtype: torch.dtype | str | None,
    overwrite: bool,
) -> AssemblyResult:
    """`assemble` on an opened, validated teacher (see module docstring for the order of work)."""
    reader, spec, dims = teacher.reader, teacher.spec, teacher.dims
    check_plan_fits(plan, reader.model_type, dims)
    out_dtype = _output_dtype(dtype, reader.config)
    target = check_output_dir(out_dir, overwrite=overwrite, source_dir=teacher.path)

    dense_config = spec.dense_config(reader.config, plan.target_width)
    dense_config.pop("torch_dtype", None)
    dense_config["dtype"] = str(out_dtype).removeprefix("torch.")

    with staged_output_dir(target) as staging:
        with ShardedCheckpointWriter(staging, max_shard_bytes) as writer:
            num_parameters = _write_tensors(
                writer, reader, spec, dims, plan, out_dtype, cast_all=dtype is not None
            )
        _write_json(staging / "config.json", dense_config)
        check_dense_checkpoint(staging)
        record = AssemblyProvenance(
            tool_version=installed_tool_version(),
            source_model=teacher.source,
            source_revision=teacher.revision,
            source_model_type=reader.model_type,
            source_snapshot_digest=teacher.snapshot_digest(),
            source_shard_digests=reader.shard_digests(),
            dense_model_type=dense_config["model_type"],
            dense_architectures=list(dense_config.get("architectures", [])),
            ffn_width=plan.target_width,
            dtype=dense_config["dtype"],
            plan_digest=plan.digest(),
            plan=plan,
            shard_digests=dict(writer.shard_digests),
        )
        _copy_files(teacher.path, staging, COPIED_FILE_PATTERNS)
        (staging / PROVENANCE_FILE).write_text(record.model_dump_json(indent=2) + "\n")
        (staging / "README.md").write_text(render_model_card(record))

    return AssemblyResult(
        out_dir=target,
        shard_digests=record.shard_digests,
        plan_digest=record.plan_digest,
        num_parameters=num_parameters,
        provenance=record,
    )


def _write_tensors(
    writer: ShardedCheckpointWriter,
    reader: CheckpointReader,
    spec: MoEArchSpec,
    dims: MoEDims,
    plan: ConversionPlan,
    out_dtype: torch.dtype,
    *,
    cast_all: bool,
) -> int:
    """Stream every student tensor into the writer: tensors outside the decoder layers (embeddings, final
    norm, head), then per layer its attention / norms and its dense FFN. Returns the parameter count."""
    sink = _TensorSink(writer)
    copy_dtype = out_dtype if cast_all else None
    layer_plans = {lp.layer: lp for lp in plan.layers}
    outside_layers, by_layer = _non_ffn_tensors_by_layer(reader, spec, dims)
    for name in outside_layers:
        sink.add(spec, name, spec.read_tensor(reader, name), copy_dtype)
    for layer in range(dims.num_layers):
        for name in by_layer.get(layer, []):
            sink.add(spec, name, spec.read_tensor(reader, name), copy_dtype)
        if layer in layer_plans:
            ffn = moe_layer_ffn(spec, reader, layer_plans[layer], plan.target_width)
        else:
            ffn = dense_layer_ffn(spec, reader, layer, plan.target_width)
        for name, tensor in spec.dense_ffn_tensors(layer, ffn).items():
            sink.add_new(name, tensor.to(out_dtype))
    return sink.num_parameters


class _TensorSink:
    """Adds tensors to the writer once each, renaming teacher tensors and counting parameters."""

    def __init__(self, writer: ShardedCheckpointWriter) -> None:
        self._writer = writer
        self._names: set[str] = set()
        self.num_parameters = 0

    def add(self, spec: MoEArchSpec, name: str, tensor: torch.Tensor, dtype: torch.dtype | None) -> None:
        target = spec.rename_for_dense(name)
        if target is None:
            return
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        self.add_new(target, tensor)

    def add_new(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise CheckpointError(
                f"dense checkpoint: tensor {name!r} would be written twice (spec naming clash)"
            )
        self._names.add(name)
        self.num_parameters += tensor.numel()
        self._writer.add(name, tensor.contiguous())


def _non_ffn_tensors_by_layer(
    reader: CheckpointReader, spec: MoEArchSpec, dims: MoEDims
) -> tuple[list[str], dict[int, list[str]]]:
    """Teacher tensors the student inherits (checkpoint.validate.inherited_by_student: not FFN, not FP8
    scales, not in layers ≥ num_hidden_layers), grouped by decoder layer.

    Returns (names outside any decoder layer, layer → names for layers < num_hidden_layers).
    """
    outside_layers: list[str] = []
    by_layer: dict[int, list[str]] = {}
    for name in reader.names():
        if not inherited_by_student(name, spec, dims):
            continue
        match = LAYER_PREFIX.match(name)
        if match is None:
            outside_layers.append(name)
        else:
            by_layer.setdefault(int(match.group(1)), []).append(name)
    return outside_layers, by_layer


def _output_dtype(dtype: torch.dtype | str | None, config: dict[str, Any]) -> torch.dtype:
    """The dtype of the written FFN weights: `dtype`, else config's dtype / torch_dtype, else float32."""
    field, value = "dtype", dtype
    if value is None:
        field = "dtype" if config.get("dtype") is not None else "torch_dtype"
        value = config.get(field) or "float32"
    if isinstance(value, str):
        resolved = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise CheckpointError(f"{field} {value!r} is not a torch dtype name")
        value = resolved
    if not value.is_floating_point:
        raise CheckpointError(f"{field} {value} is not a floating-point dtype")
    return value


def _copy_files(source_dir: Path, out_dir: Path, patterns: Iterable[str]) -> None:
    for pattern in patterns:
        for path in sorted(source_dir.glob(pattern)):
            if path.is_file():
                shutil.copyfile(path, out_dir / path.name)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
