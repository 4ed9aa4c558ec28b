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

Streaming: every output tensor's name, dtype and shape is known before any data is read (teacher headers,
and `spec.dense_ffn_tensors` evaluated on meta tensors), so the writer is given the whole layout up front
and streams each tensor into its shard as soon as it is made, header first, hashing as it writes
(io/writer.py, io/shard_file.py). Tensors are made in the writer's order (the safetensors serializer's:
dtype, then name, which keeps each decoder layer's tensors together), each layer's dense FFN computed once
when its first tensor is due; after each tensor the reader drops its memory maps (`release_mapped`), so
mapped pages never outlive the tensor that touched them. Fused expert tensors are read only at the kept
experts' slices (arch/layouts.py FusedLayout.read).

Peak memory above the process's baseline (measured in tests/core/test_assembly_memory.py and
bench/streaming_convert.py), in bytes, for a layer with K kept experts in k groups (largest group G
experts) of width I on hidden H, target width W, output itemsize o, stored itemsize s:
    peak ≈ max(largest copied tensor,        its mapped pages (+ a copy when cast), e.g. the embedding [V, H]
               3·W·H·o                        the layer's dense FFN, allocated once at its final width
               + G·3·I·H·(s + 4 + 8)          one group's experts: mapped slices, float32, float64
               + 3·I·H·8                      its merged block (float64), written into the FFN's slice
               (+ 2·W·H·o for fused targets such as GPT-OSS, whose gate/up are interleaved on write))
— never a whole output shard, never the whole teacher, never all K experts at once: independent of the
number of layers, of E and of K. Qwen3-30B-A3B (bf16, K = 8, prune, W = 6144, H = 2048, I = 768):
max(622 MB embedding, 75 MB + 66 MB + 38 MB) ≈ 0.62 GB; measured 0.63 GB on a 5 GB three-layer checkpoint
(bench/streaming_convert.py, README). The C allocator may keep some freed memory on top: the FFN term
(≈ 180 MB) measured 246 MB on the bench's --quick checkpoint (same W, H, I).

Digests: the teacher's shard digests come from `Teacher.file_digests()`: known when the teacher was opened
with recorded digests (no second hash), else hashed once here; the output shards' from the writer
(computed while writing, not re-read).

Order of work: validate everything that can be checked from files (the teacher through `open_teacher`:
integrity, every tensor vs config; plan vs checkpoint; output folder) before reading any expert; write
into a staging folder; read the written headers back and check they are exactly the parameters of the
dense model class built from the written config.json (checkpoint/dense.py: nothing missing, nothing
unexpected, every shape right); only then publish the folder by rename (output_dir.py).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
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
from moe2dense_core.io.fp8 import dequantized_dtype
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.safetensors_header import TensorEntry
from moe2dense_core.io.writer import ShardedCheckpointWriter
from moe2dense_core.plan import ConversionPlan, LayerPlan

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
        student = _student_tensors(reader, spec, dims, plan, out_dtype, cast_all=dtype is not None)
        layout = [tensor.entry for tensor in student.values()]
        with ShardedCheckpointWriter(staging, max_shard_bytes, layout=layout) as writer:
            _write_tensors(writer, student, reader, spec, plan, out_dtype)
        _write_json(staging / "config.json", dense_config)
        check_dense_checkpoint(staging)
        file_digests = teacher.file_digests()
        record = AssemblyProvenance(
            tool_version=installed_tool_version(),
            source_model=teacher.source,
            source_revision=teacher.revision,
            source_model_type=reader.model_type,
            source_snapshot_digest=teacher.snapshot_digest(),
            source_shard_digests={shard: file_digests[shard] for shard in reader.shard_files()},
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
        num_parameters=sum(math.prod(entry.shape) for entry in layout),
        provenance=record,
    )


@dataclass(frozen=True)
class _StudentTensor:
    """One tensor of the dense checkpoint: what is written (entry), the decoder layer it belongs to (None:
    embeddings, final norm, head) and the teacher tensor it copies (None: part of the dense FFN of `layer`,
    which is then set)."""

    entry: TensorEntry
    layer: int | None
    source: str | None


def _student_tensors(
    reader: CheckpointReader,
    spec: MoEArchSpec,
    dims: MoEDims,
    plan: ConversionPlan,
    out_dtype: torch.dtype,
    *,
    cast_all: bool,
) -> dict[str, _StudentTensor]:
    """Every tensor of the dense checkpoint, from headers and shapes alone: the inherited teacher tensors
    renamed by `spec.rename_for_dense` (in their read dtype — FP8 dequantised to float32 — or `out_dtype`
    when `cast_all` and floating), and per decoder layer `spec.dense_ffn_tensors` of a width-W FFN in
    `out_dtype` (names and shapes from meta tensors). CheckpointError on a name written twice."""
    student: dict[str, _StudentTensor] = {}

    def put(tensor: _StudentTensor) -> None:
        if tensor.entry.name in student:
            raise CheckpointError(
                f"dense checkpoint: tensor {tensor.entry.name!r} would be written twice (spec naming clash)"
            )
        student[tensor.entry.name] = tensor

    outside_layers, by_layer = _non_ffn_tensors_by_layer(reader, spec, dims)
    inherited = [(None, name) for name in outside_layers]
    inherited += [(layer, name) for layer, names in sorted(by_layer.items()) for name in names]
    for layer, name in inherited:
        target = spec.rename_for_dense(name)
        if target is None:
            continue
        dtype = dequantized_dtype(reader, name)
        if cast_all and dtype.is_floating_point:
            dtype = out_dtype
        put(_StudentTensor(TensorEntry(target, dtype, reader.shape(name)), layer, name))
    width, hidden = plan.target_width, dims.hidden
    shapes_only = ExpertWeights(
        gate=torch.empty(1, width, hidden, device="meta"),
        up=torch.empty(1, width, hidden, device="meta"),
        down=torch.empty(1, hidden, width, device="meta"),
    )
    for layer in range(dims.num_layers):
        for name, tensor in spec.dense_ffn_tensors(layer, shapes_only).items():
            put(_StudentTensor(TensorEntry(name, out_dtype, tuple(tensor.shape)), layer, None))
    return student


def _write_tensors(
    writer: ShardedCheckpointWriter,
    student: dict[str, _StudentTensor],
    reader: CheckpointReader,
    spec: MoEArchSpec,
    plan: ConversionPlan,
    out_dtype: torch.dtype,
) -> None:
    """Make every student tensor in `writer.order` and stream it into the writer: a copied teacher tensor
    read (and cast) on its own; a dense-FFN tensor from its layer's FFN, computed once when the first of
    its tensors is due and kept until the last is written. The reader's memory maps are dropped after each
    tensor, so what is mapped is at most the tensor being copied or one layer's kept experts."""
    layer_plans = {lp.layer: lp for lp in plan.layers}
    ffn: dict[str, torch.Tensor] = {}
    for name in writer.order or ():
        tensor = student[name]
        if tensor.source is not None:
            writer.add(name, spec.read_tensor(reader, tensor.source).to(tensor.entry.dtype))
        else:
            if name not in ffn:
                ffn = _dense_ffn_tensors(
                    spec, reader, tensor.layer, layer_plans, plan.target_width, out_dtype
                )
            writer.add(name, ffn.pop(name))
        reader.release_mapped()


def _dense_ffn_tensors(
    spec: MoEArchSpec,
    reader: CheckpointReader,
    layer: int,
    layer_plans: dict[int, LayerPlan],
    target_width: int,
    out_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """The dense FFN tensors of decoder `layer`, stored in `out_dtype` (merged kept experts of a MoE layer,
    or a teacher dense MLP zero-padded), as `spec.dense_ffn_tensors` names them."""
    if layer in layer_plans:
        ffn = moe_layer_ffn(spec, reader, layer_plans[layer], target_width, out_dtype)
    else:
        ffn = dense_layer_ffn(spec, reader, layer, target_width, out_dtype)
    return spec.dense_ffn_tensors(layer, ffn)


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
