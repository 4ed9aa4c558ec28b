"""Every family spec against the real transformers model: on-disk reads equal the in-memory experts exactly,
routing semantics match the router modules, and the dense target loads in stock transformers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from moe2dense_core.arch import ExpertWeights, MoEArchSpec, get_spec, supported_model_types
from moe2dense_core.checkpoint import validate_checkpoint
from moe2dense_core.io import CheckpointReader, ShardedCheckpointWriter
from tests.fixtures.tiny_moe import FAMILIES, TINY_SIZES, build_tiny_moe

torch.set_num_threads(1)

EXPECTED_DIMS = {  # (E, k, I, H, layers, moe layers, shared width, dense width) of the tiny fixtures
    "qwen3_moe": (8, 2, 32, 64, 2, (0, 1), 0, 0),
    "mixtral": (8, 2, 32, 64, 2, (0, 1), 0, 0),
    "olmoe": (8, 2, 32, 64, 2, (0, 1), 0, 0),
    "qwen2_moe": (8, 2, 32, 64, 2, (0, 1), 64, 0),
    "deepseek_v2": (8, 2, 32, 64, 3, (1, 2), 64, 128),
    "deepseek_v3": (8, 2, 32, 64, 3, (1, 2), 32, 128),
    "gpt_oss": (8, 2, 32, 64, 2, (0, 1), 0, 0),
    "granitemoe": (8, 2, 32, 64, 2, (0, 1), 0, 0),
}
DENSE_CLASSES = {
    "qwen3_moe": "Qwen3ForCausalLM",
    "mixtral": "MistralForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "granitemoe": "GraniteForCausalLM",
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_moe(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def teachers(tiny_dirs: dict[str, Path]) -> dict[str, torch.nn.Module]:
    return {
        f: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for f, d in tiny_dirs.items()
    }


def _assert_same_experts(ours: ExpertWeights, theirs: ExpertWeights) -> None:
    for field in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == torch.float32, field
            assert torch.equal(a, b.float()), field


def test_every_family_is_registered() -> None:
    """Every family file is imported by moe2dense_core.arch (FAMILIES is the registry itself)."""
    assert supported_model_types() == sorted(EXPECTED_DIMS)


@pytest.mark.parametrize("family", FAMILIES)
def test_dims_and_validation(family: str, tiny_dirs: dict[str, Path]) -> None:
    reader = CheckpointReader(tiny_dirs[family])
    dims = validate_checkpoint(reader, get_spec(family))
    actual = (dims.num_experts, dims.top_k, dims.expert_width, dims.hidden, dims.num_layers, dims.moe_layers,
              dims.shared_width, dims.dense_width)  # fmt: skip
    assert actual == EXPECTED_DIMS[family]
    assert len(reader.shard_files()) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_disk_reads_equal_the_loaded_model_exactly(
    family: str, tiny_dirs: dict[str, Path], teachers: dict[str, torch.nn.Module]
) -> None:
    spec, reader, model = get_spec(family), CheckpointReader(tiny_dirs[family]), teachers[family]
    dims = spec.dims(reader.config)
    for layer in range(dims.num_layers):
        if layer not in dims.moe_layers:
            mlp = model.model.layers[layer].mlp
            dense = spec.read_dense_mlp(reader, layer)
            expected = ExpertWeights(
                mlp.gate_proj.weight[None], mlp.up_proj.weight[None], mlp.down_proj.weight[None]
            )
            _assert_same_experts(dense, expected)
            assert spec.dense_mlp_tensor_names(reader.config, layer)
            continue
        in_memory = spec.module_expert_weights(spec.experts_module(model, layer))
        _assert_same_experts(spec.read_experts(reader, layer, list(range(dims.num_experts))), in_memory)
        _assert_same_experts(spec.read_experts(reader, layer, [5, 2]), in_memory.select([5, 2]))
        into = in_memory.select([5, 2]).to(torch.float64)  # the buffer: shapes and biases of the family
        for tensor in (t for t in vars(into).values() if t is not None):
            tensor.zero_()
        spec.read_experts_into(reader, layer, [5, 2], into)
        for field, expected in vars(in_memory.select([5, 2])).items():
            assert expected is None or torch.equal(getattr(into, field), expected.double()), field
        router = spec.router_module(model, layer)
        for key, tensor in spec.read_router(reader, layer).items():
            assert torch.equal(tensor, getattr(router, key).float()), key
        shared = spec.read_shared(reader, layer)
        assert (shared is None) == (dims.shared_width == 0)
        if shared is not None:
            module = spec.shared_module(model, layer)
            expected = ExpertWeights(
                module.gate_proj.weight[None], module.up_proj.weight[None], module.down_proj.weight[None]
            )
            _assert_same_experts(shared, expected)
        assert set(spec.routed_tensor_names(reader.config, layer)) <= set(reader.names())
        assert set(spec.shared_tensor_names(reader.config, layer)) <= set(reader.names())


@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_experts_reproduce_the_experts_module(
    family: str, teachers: dict[str, torch.nn.Module]
) -> None:
    """f_e(x) from ExpertWeights.forward(x, spec.activation) equals the module run with every token sent to e."""
    spec, model = get_spec(family), teachers[family]
    layer = spec.dims(model.config.to_dict()).moe_layers[0]
    experts = spec.experts_module(model, layer)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    ours = spec.module_expert_weights(experts).forward(x, spec.activation)  # [E, T, H]
    with torch.no_grad():
        for e in range(ours.shape[0]):
            theirs = experts(x, torch.full((5, 1), e), torch.ones(5, 1))
            torch.testing.assert_close(ours[e], theirs, rtol=1e-5, atol=1e-6)


def _expected_applied_weights(family: str, probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    selected = probs.gather(1, idx)
    renormalised = selected / selected.sum(-1, keepdim=True)
    return {
        "qwen3_moe": renormalised,  # norm_topk_prob true in the release
        "mixtral": renormalised,  # always
        "olmoe": selected,  # norm_topk_prob false
        "qwen2_moe": selected,  # norm_topk_prob false
        "deepseek_v2": selected * 1.0,  # routed_scaling_factor 1.0, no renormalisation
        "deepseek_v3": renormalised * 2.5,  # unbiased sigmoid scores renormalised × 2.5
        "gpt_oss": renormalised,  # softmax over the selected logits
        "granitemoe": renormalised,  # softmax over the selected logits
    }[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_router_probs_match_the_router_modules(family: str, teachers: dict[str, torch.nn.Module]) -> None:
    spec, model = get_spec(family), teachers[family]
    layer = spec.dims(model.config.to_dict()).moe_layers[-1]
    router = spec.router_module(model, layer)
    with torch.no_grad():
        logits, weights, idx = router(torch.randn(7, 64, generator=torch.Generator().manual_seed(1)))
    probs = spec.router_probs(logits)
    assert probs.dtype == torch.float64 and probs.shape == (7, 8)
    if family != "deepseek_v3":  # V3's p = sigmoid(z) is not a distribution
        torch.testing.assert_close(probs.sum(-1), torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(
        _expected_applied_weights(family, probs, idx), weights.double(), rtol=1e-5, atol=1e-6
    )


def _write_dense_checkpoint(
    spec: MoEArchSpec, reader: CheckpointReader, out: Path, ffn_of_layer: Callable[[int], ExpertWeights]
) -> None:
    """Teacher's non-FFN tensors (renamed) + one FFN per layer, config from spec.dense_config."""
    dims = spec.dims(reader.config)
    ffns = {layer: ffn_of_layer(layer) for layer in range(dims.num_layers)}
    width = max(f.width for f in ffns.values())
    with ShardedCheckpointWriter(out, max_shard_bytes=100_000) as writer:
        for name in reader.names():
            target = spec.rename_for_dense(name)
            if target is not None:
                writer.add(target, reader.get(name))
        for layer, ffn in ffns.items():
            pad = width - ffn.width  # zero padding: silu(0)·0 = 0 and (0 + 1)·clamp-glu(0) = 0, exact
            padded = ExpertWeights(
                gate=torch.nn.functional.pad(ffn.gate, (0, 0, 0, pad)),
                up=torch.nn.functional.pad(ffn.up, (0, 0, 0, pad)),
                down=torch.nn.functional.pad(ffn.down, (0, pad)),
                gate_bias=None if ffn.gate_bias is None else torch.nn.functional.pad(ffn.gate_bias, (0, pad)),
                up_bias=None if ffn.up_bias is None else torch.nn.functional.pad(ffn.up_bias, (0, pad)),
                down_bias=ffn.down_bias,
            )
            for name, tensor in spec.dense_ffn_tensors(layer, padded).items():
                writer.add(name, tensor)
    (out / "config.json").write_text(json.dumps(spec.dense_config(reader.config, width)))


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_target_loads_in_stock_transformers_with_every_tensor(
    family: str, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    spec, reader = get_spec(family), CheckpointReader(tiny_dirs[family])
    dims = spec.dims(reader.config)

    def ffn(layer: int) -> ExpertWeights:
        if layer in dims.moe_layers:
            return spec.read_experts(reader, layer, [3])
        return spec.read_dense_mlp(reader, layer)

    _write_dense_checkpoint(spec, reader, tmp_path, ffn)
    dense, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(dense).__name__ == DENSE_CLASSES[family]
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not any(
        hasattr(layer.mlp, "experts") and layer.mlp.experts.num_experts > 1 for layer in dense.model.layers
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_config_builds_with_from_config(family: str, tiny_dirs: dict[str, Path]) -> None:
    spec, reader = get_spec(family), CheckpointReader(tiny_dirs[family])
    config = spec.dense_config(reader.config, 96)
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    assert type(model).__name__ == DENSE_CLASSES[family]
    assert model.config.model_type == spec.dense_model_type
    assert len(model.model.layers) == TINY_SIZES[family]["num_hidden_layers"]


ONE_EXPERT_FAMILIES = [family for family in FAMILIES if family not in ("qwen2_moe", "deepseek_v3")]
"""Families where E = 1, top-1 is a valid config whose MoE block is exactly a dense FFN (Qwen2-MoE's shared
gate is token dependent and DeepSeek-V3's group routing needs ≥ 2 experts per group)."""


@pytest.mark.parametrize("family", ONE_EXPERT_FAMILIES)
def test_one_expert_teacher_and_its_dense_student_give_the_same_logits(family: str, tmp_path: Path) -> None:
    teacher_dir = build_tiny_moe(
        family, tmp_path / "teacher", num_experts=1, top_k=1, mxfp4=False if family == "gpt_oss" else None
    )
    spec, reader = get_spec(family), CheckpointReader(teacher_dir)
    dims = validate_checkpoint(reader, spec)

    def ffn(layer: int) -> ExpertWeights:
        if layer not in dims.moe_layers:
            return spec.read_dense_mlp(reader, layer)
        expert = spec.read_experts(reader, layer, [0])
        shared = spec.read_shared(reader, layer)
        return (
            expert
            if shared is None
            else ExpertWeights(
                gate=torch.cat([expert.gate, shared.gate], 1),
                up=torch.cat([expert.up, shared.up], 1),
                down=torch.cat([expert.down, shared.down], 2),
            )
        )

    _write_dense_checkpoint(spec, reader, tmp_path / "dense", ffn)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)


def test_qwen3_moe_dense_teacher_layers_from_mlp_only_layers(tmp_path: Path) -> None:
    """Qwen3-MoE's `mlp_only_layers` makes a layer a plain MLP of width intermediate_size; the spec reads it."""
    model_dir = build_tiny_moe("qwen3_moe", tmp_path, mlp_only_layers=[1])
    spec, reader = get_spec("qwen3_moe"), CheckpointReader(model_dir)
    dims = validate_checkpoint(reader, spec)
    assert dims.moe_layers == (0,) and dims.dense_width == 128
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mlp = model.model.layers[1].mlp
    dense = spec.read_dense_mlp(reader, 1)
    _assert_same_experts(
        dense, ExpertWeights(mlp.gate_proj.weight[None], mlp.up_proj.weight[None], mlp.down_proj.weight[None])
    )
    assert spec.rename_for_dense("model.layers.1.mlp.up_proj.weight") is None
