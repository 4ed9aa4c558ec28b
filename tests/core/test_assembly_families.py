"""Assembly on a tiny teacher of every family: the exact identity through a stock-transformers student.

For each MoE layer ℓ of the student loaded with `AutoModelForCausalLM.from_pretrained` (float64):
    student.mlp_ℓ(x) = Σ_g c_g · f_g(x) (+ s · f_shared(x)),   f_g with W_g = Σ_{e∈g} m_e W_e,
where the teacher experts f_e come from the TEACHER loaded by transformers (not from the disk path
assembly uses), and every teacher dense layer is reproduced unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.layouts import PerExpertLayout
from moe2dense_core.arch.spec import get_spec
from moe2dense_core.assembly import PROVENANCE_FILE, assemble
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.plan import ConversionPlan, LayerPlan, PlanConfig
from tests.fixtures.tiny_moe import FAMILIES, add_tensor_on_disk, build_tiny_moe

PADDING = 8
"""Extra zero columns beyond the natural width: the identity must hold through the padding."""


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_moe(family, tmp_path_factory.mktemp(family), seed=11)
        return built[family]

    return get


def hand_plan(
    family: str, model_dir: Path, groups, merge_weights, scales, shared_scale: float
) -> ConversionPlan:
    """The same decision in every MoE layer, target width = widest layer + PADDING."""
    config = json.loads((model_dir / "config.json").read_text())
    dims = get_spec(family).dims(config)
    has_shared = dims.shared_width > 0
    kept = sorted(e for group in groups for e in group)
    return ConversionPlan(
        model_type=family,
        num_experts=dims.num_experts,
        top_k=dims.top_k,
        expert_width=dims.expert_width,
        target_width=max(len(groups) * dims.expert_width + dims.shared_width, dims.dense_width) + PADDING,
        config=PlanConfig(
            scoring="acp", num_selected=len(kept), num_groups=len(groups), grouping="output_cluster"
        ),
        layers=[
            LayerPlan(
                layer=layer,
                kept=kept,
                scores=[1.0] * dims.num_experts,
                groups=groups,
                merge_weights=merge_weights,
                scales=scales,
                shared_scale=shared_scale if has_shared else None,
            )
            for layer in dims.moe_layers
        ],
    )


def pruning_plan(family: str, model_dir: Path, kept: list[int]) -> ConversionPlan:
    """Pure pruning by hand: each kept expert its own group, c_g = 1/k, no merging."""
    k = len(kept)
    return hand_plan(
        family,
        model_dir,
        groups=[[e] for e in kept],
        merge_weights=[[1.0]] * k,
        scales=[1 / k] * k,
        shared_scale=0,
    )


def merged_expert(experts: ExpertWeights, members: list[int], weights: list[float]) -> ExpertWeights:
    """W = Σ_i weights_i · W_{members_i} for every matrix and bias, written out directly."""

    def combine(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return sum(w * tensor[e] for e, w in zip(members, weights, strict=True))[None]

    return ExpertWeights(
        **{
            name: combine(getattr(experts, name))
            for name in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")
        }
    )


def mlp_output(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A decoder layer's MLP on x [T, H] → [T, H] (MoE-shaped MLPs return (output, router scores))."""
    out = mlp(x[None])
    return (out[0] if isinstance(out, tuple) else out)[0]


def check_identity(family: str, teacher_dir: Path, student_dir: Path, plan: ConversionPlan) -> None:
    spec = get_spec(family)
    # eager experts: the grouped-matmul kernel of fused MoE layers (OLMoE / GPT-OSS students) has no float64
    teacher = AutoModelForCausalLM.from_pretrained(
        teacher_dir, dtype=torch.float64, experts_implementation="eager"
    )
    student = AutoModelForCausalLM.from_pretrained(
        student_dir, dtype=torch.float64, experts_implementation="eager"
    )
    dims = spec.dims(json.loads((teacher_dir / "config.json").read_text()))
    x = torch.randn(9, dims.hidden, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    layer_plans = {lp.layer: lp for lp in plan.layers}
    with torch.no_grad():
        for layer in range(dims.num_layers):
            got = mlp_output(student.model.layers[layer].mlp, x)
            if layer not in layer_plans:  # a teacher layer that is already dense: `mlp` in every family
                expected = mlp_output(teacher.model.layers[layer].mlp, x)
            else:
                lp = layer_plans[layer]
                experts = spec.module_expert_weights(spec.experts_module(teacher, layer)).to(torch.float64)
                expected = sum(
                    c * merged_expert(experts, group, weights).forward(x, spec.activation)[0]
                    for group, weights, c in zip(lp.groups, lp.merge_weights, lp.scales, strict=True)
                )
                if lp.shared_scale is not None:
                    shared = spec.shared_module(teacher, layer)
                    expected = expected + lp.shared_scale * shared(x[None])[0]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10, msg=f"{family} layer {layer}")


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_ffn_equals_scaled_sum_of_merged_groups(family, teacher_dirs, tmp_path):
    teacher_dir = teacher_dirs(family)
    plan = hand_plan(
        family,
        teacher_dir,
        groups=[[5, 1, 6], [3]],
        merge_weights=[[0.5, 0.3, 0.2], [1.0]],
        scales=[0.35, 0.65],
        shared_scale=0.8,
    )
    assemble(teacher_dir, plan, tmp_path / "dense", dtype=torch.float64)
    check_identity(family, teacher_dir, tmp_path / "dense", plan)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_one_expert_group_reproduces_its_expert(family, teacher_dirs, tmp_path):
    teacher_dir = teacher_dirs(family)
    plan = hand_plan(family, teacher_dir, groups=[[4]], merge_weights=[[1.0]], scales=[1.0], shared_scale=0.0)
    assemble(teacher_dir, plan, tmp_path / "dense", dtype=torch.float64)
    check_identity(family, teacher_dir, tmp_path / "dense", plan)


def test_written_checkpoint_is_complete_and_recorded(teacher_dirs, tmp_path):
    """Several shards, every teacher non-FFN tensor copied bit for bit, config/tokenizer/card/provenance."""
    family = "qwen3_moe"
    teacher_dir = teacher_dirs(family)
    plan = pruning_plan(family, teacher_dir, kept=[0, 7])
    result = assemble(teacher_dir, plan, tmp_path / "dense", max_shard_bytes=40_000)
    out = result.out_dir

    assert len(result.shard_digests) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result.shard_digests)
    reader = CheckpointReader(teacher_dir)
    written = {}
    for shard in result.shard_digests:
        with safe_open(str(out / shard), framework="pt") as f:
            written.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118 (safe_open is not a dict)
    copied = [name for name in reader.names() if ".mlp." not in name]
    for name in copied:
        assert torch.equal(written[name], reader.get(name)), name
    assert not any(".experts." in name or name.endswith("mlp.gate.weight") for name in written)
    assert written["model.layers.1.mlp.down_proj.weight"].shape == (64, plan.target_width)
    assert result.num_parameters == sum(t.numel() for t in written.values())

    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["intermediate_size"], config["dtype"]) == (
        "qwen3",
        plan.target_width,
        "float32",
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"):
        assert (out / name).is_file(), name
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["plan_digest"] == plan.digest() == result.plan_digest
    assert ConversionPlan.model_validate(provenance["plan"]) == plan
    assert provenance["source_shard_digests"] == reader.shard_digests()
    assert provenance["shard_digests"] == result.shard_digests
    card = (out / "README.md").read_text()
    assert plan.digest() in card and str(teacher_dir.absolute()) in card and "arXiv:2605.28207" in card
    assert all(digest in card for digest in reader.shard_digests().values())


def test_dtype_casts_every_floating_tensor_and_the_config(teacher_dirs, tmp_path):
    teacher_dir = teacher_dirs("qwen3_moe")
    plan = pruning_plan("qwen3_moe", teacher_dir, kept=[2, 3])
    result = assemble(teacher_dir, plan, tmp_path / "dense", dtype="bfloat16")
    assert json.loads((result.out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    student = AutoModelForCausalLM.from_pretrained(result.out_dir)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}


ONE_EXPERT_FAMILIES = [f for f in FAMILIES if f != "deepseek_v3"]
"""Families where a one-expert top-1 MoE is a valid config. Not DeepSeek-V3: its group-limited routing
scores each group by the sum of its top-2 experts (transformers 5.24 DeepseekV3TopkRouter), so a group
needs at least 2 experts."""


def zero_tensor_on_disk(model_dir: Path, name: str) -> None:
    """Rewrite the shard holding `name` with that tensor set to zero (test set-up, not the code under test)."""
    from safetensors.torch import load_file, save_file

    shard = model_dir / CheckpointReader(model_dir).shard_of(name)
    tensors = load_file(str(shard))
    tensors[name] = torch.zeros_like(tensors[name])
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("family", ONE_EXPERT_FAMILIES)
def test_one_expert_top1_teacher_converts_to_a_dense_model_with_equal_logits(family, tmp_path):
    """E = 1, k = 1: every token routes to the one expert with weight 1, so the dense student is the teacher exactly.
    Qwen2-MoE's shared expert is gated per token by sigmoid(w·x); with w = 0 the gate is the constant
    1/2, which the plan's shared_scale (mean gate over calibration) recovers exactly."""
    from moe2dense_core import PlanConfig, assemble, build_plan, collect_stats

    teacher_dir = build_tiny_moe(family, tmp_path / "teacher", num_experts=1, top_k=1, seed=5)
    if family == "qwen2_moe":
        for layer in get_spec(family).dims(json.loads((teacher_dir / "config.json").read_text())).moe_layers:
            zero_tensor_on_disk(teacher_dir, f"model.layers.{layer}.mlp.shared_expert_gate.weight")
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    stats = collect_stats(teacher_dir, [tokens])
    plan = build_plan(stats, PlanConfig(scoring="sf", grouping="prune", scaling="uniform"))
    assemble(teacher_dir, plan, tmp_path / "dense")

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32)
    with torch.no_grad():
        expected = teacher(tokens).logits
        got = student(tokens).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_tensors_of_layers_beyond_num_hidden_layers_are_dropped(teacher_dirs, tmp_path):
    """Like DeepSeek-V3's multi-token-prediction layer `model.layers.61.*` with num_hidden_layers = 61."""
    teacher_dir = Path(shutil.copytree(teacher_dirs("qwen3_moe"), tmp_path / "teacher"))
    add_tensor_on_disk(teacher_dir, "model.layers.2.eh_proj.weight", torch.ones(64, 128))
    plan = pruning_plan("qwen3_moe", teacher_dir, kept=[0, 1])
    result = assemble(teacher_dir, plan, tmp_path / "dense")
    index = json.loads((result.out_dir / "model.safetensors.index.json").read_text())
    assert not [name for name in index["weight_map"] if name.startswith("model.layers.2.")]
    _, loading = AutoModelForCausalLM.from_pretrained(result.out_dir, output_loading_info=True)
    assert not loading["unexpected_keys"] and not loading["missing_keys"]


def test_a_hub_cache_snapshot_records_its_revision(teacher_dirs, tmp_path):
    revision = "ad44e777bcd18fa416d9da3bd8f70d33ebb85d39"
    snapshot = Path(
        shutil.copytree(teacher_dirs("qwen3_moe"), tmp_path / "models--org--name" / "snapshots" / revision)
    )
    plan = pruning_plan("qwen3_moe", snapshot, kept=[0, 1])
    result = assemble(snapshot, plan, tmp_path / "dense")
    assert result.provenance.source_revision == revision
    assert f"revision: `{revision}`" in (result.out_dir / "README.md").read_text()


class RecordingReader(CheckpointReader):
    """A real CheckpointReader that remembers which tensors were read."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        self.read: list[str] = []

    def get(self, name: str) -> torch.Tensor:
        self.read.append(name)
        return super().get(name)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v2", "gpt_oss", "granitemoe"])
def test_a_layer_reads_only_its_kept_experts(family, teacher_dirs):
    from moe2dense_core.assembly.layer_ffn import moe_layer_ffn

    teacher_dir = teacher_dirs(family)
    plan = hand_plan(
        family,
        teacher_dir,
        groups=[[6, 2], [3]],
        merge_weights=[[0.5, 0.5], [1.0]],
        scales=[0.5, 0.5],
        shared_scale=1.0,
    )
    layer_plan = plan.layers[-1]
    reader = RecordingReader(teacher_dir)
    spec = get_spec(family)
    moe_layer_ffn(spec, reader, layer_plan, plan.target_width)
    allowed = set(spec.shared_tensor_names(reader.config, layer_plan.layer))
    routed = set(spec.routed_tensor_names(reader.config, layer_plan.layer))
    assert set(reader.bytes_read) <= allowed | routed
    if isinstance(spec.disk_experts, PerExpertLayout):
        assert set(reader.read) <= allowed | routed
        assert {
            int(name.split(".experts.")[1].split(".")[0]) for name in reader.read if ".experts." in name
        } == {2, 3, 6}
    else:  # every fused tensor [E, …] (MXFP4 blocks and scales, biases): only 3 of the 8 experts' slices
        fused = spec.disk_experts.tensor_names(spec.experts_prefix(layer_plan.layer), reader.config, 8)
        assert set(reader.bytes_read) - allowed == set(fused)
        for name in fused:
            assert reader.bytes_read[name] == 3 * reader_bytes(reader, name) // 8, name


def reader_bytes(reader: CheckpointReader, name: str) -> int:
    """Stored size of a tensor, from its shard header."""
    return math.prod(reader.shape(name)) * torch.empty(0, dtype=reader.dtype(name)).element_size()


class WholeTensorReader(CheckpointReader):
    """A real CheckpointReader that selects experts the former way: read the whole fused tensor, then index."""

    def index_select(self, name: str, indices) -> torch.Tensor:
        return self.get(name)[list(indices)]


@pytest.mark.parametrize("family", ["gpt_oss", "granitemoe"])
def test_reading_kept_slices_of_fused_experts_equals_reading_them_whole(family, teacher_dirs):
    """The selective read gives exactly what reading the whole fused tensors gave (MXFP4 dequantised)."""
    teacher_dir = teacher_dirs(family)
    spec = get_spec(family)
    reader = CheckpointReader(teacher_dir)
    layer = spec.dims(reader.config).moe_layers[-1]
    kept = [6, 2, 3, 7]
    selected = spec.read_experts(reader, layer, kept)
    whole = spec.read_experts(WholeTensorReader(teacher_dir), layer, kept)
    for field in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        got, expected = getattr(selected, field), getattr(whole, field)
        assert (got is None and expected is None) or torch.equal(got, expected), field
