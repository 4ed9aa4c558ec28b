"""The specs against the REAL released config.json / weight maps in ../shared/data/real_moe_configs:
sizes read from the real configs, tensor names the specs expect exist in the real indexes, and the tiny
fixtures are saved under exactly the released naming patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moe2dense_core.arch import get_spec
from tests.fixtures.tiny_moe import REAL_CONFIGS, build_tiny_moe

REAL_DIRS = {
    "qwen3_moe": "Qwen__Qwen3-30B-A3B",
    "mixtral": "mistralai__Mixtral-8x7B-v0.1",
    "deepseek_v3": "deepseek-ai__DeepSeek-R1",
    "gpt_oss": "openai__gpt-oss-20b",
    "granitemoe": "ibm-granite__granite-3.1-1b-a400m-instruct",
}
REAL_DIMS = {  # (E, k, I, H, layers, first MoE layer, shared width, dense width) from the model cards
    "qwen3_moe": (128, 8, 768, 2048, 48, 0, 0, 0),
    "mixtral": (8, 2, 14336, 4096, 32, 0, 0, 0),
    "deepseek_v3": (256, 8, 2048, 7168, 61, 3, 2048, 18432),
    "gpt_oss": (32, 4, 2880, 2880, 24, 0, 0, 0),
    "granitemoe": (32, 8, 512, 1024, 24, 0, 0, 0),
}
WITH_INDEX = ["mixtral", "gpt_oss", "granitemoe"]


def _real(shared_data: Path, family: str, name: str) -> dict:
    return json.loads((shared_data / "real_moe_configs" / REAL_DIRS[family] / name).read_text())


def _pattern(name: str) -> str:
    """Tensor name with the layer and expert indices abstracted: model.layers.{i}.….experts.{e}.…"""
    name = re.sub(r"^model\.layers\.\d+\.", "model.layers.{i}.", name)
    return re.sub(r"\.experts\.\d+\.", ".experts.{e}.", name)


@pytest.mark.parametrize("family", sorted(REAL_DIRS))
def test_dims_of_the_real_configs(shared_data: Path, family: str) -> None:
    d = get_spec(family).dims(_real(shared_data, family, "config.json"))
    first_moe = d.moe_layers[0]
    actual = (
        d.num_experts,
        d.top_k,
        d.expert_width,
        d.hidden,
        d.num_layers,
        first_moe,
        d.shared_width,
        d.dense_width,
    )
    assert actual == REAL_DIMS[family]
    assert d.moe_layers == tuple(range(first_moe, d.num_layers))


@pytest.mark.parametrize("family", sorted(REAL_DIRS))
def test_fixture_starts_from_the_real_config(shared_data: Path, family: str) -> None:
    real = _real(shared_data, family, "config.json")
    for key, value in REAL_CONFIGS[family].items():
        assert real[key] == value, key


@pytest.mark.parametrize("family", WITH_INDEX)
def test_spec_names_exist_in_the_real_index(shared_data: Path, family: str) -> None:
    spec = get_spec(family)
    config = _real(shared_data, family, "config.json")
    weight_map = _real(shared_data, family, "model.safetensors.index.json")["weight_map"]
    expected: set[str] = set()
    for layer in range(spec.dims(config).num_layers):
        expected |= set(spec.routed_tensor_names(config, layer)) | set(spec.expected_shapes(config, layer))
    assert expected <= set(weight_map)
    kept = {name for name in weight_map if spec.rename_for_dense(name) is not None}
    assert kept | expected == set(weight_map)  # every tensor is either carried over or part of the MoE FFN
    assert not kept & expected


@pytest.mark.parametrize("family", WITH_INDEX)
def test_tiny_fixture_uses_the_released_naming_patterns(
    shared_data: Path, family: str, tmp_path: Path
) -> None:
    weight_map = _real(shared_data, family, "model.safetensors.index.json")["weight_map"]
    tiny = json.loads((build_tiny_moe(family, tmp_path) / "model.safetensors.index.json").read_text())[
        "weight_map"
    ]
    assert {_pattern(n) for n in tiny} == {_pattern(n) for n in weight_map}


def test_qwen3_documented_layer_names_match_the_tiny_fixture(tmp_path: Path) -> None:
    """real_moe_configs/README.md lists the Qwen3-30B-A3B per-layer names (the index itself is not stored)."""
    documented = {
        "model.layers.{i}.input_layernorm.weight",
        "model.layers.{i}.post_attention_layernorm.weight",
        *(f"model.layers.{{i}}.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
        "model.layers.{i}.self_attn.q_norm.weight",
        "model.layers.{i}.self_attn.k_norm.weight",
        "model.layers.{i}.mlp.gate.weight",
        *(f"model.layers.{{i}}.mlp.experts.{{e}}.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
    tiny = json.loads((build_tiny_moe("qwen3_moe", tmp_path) / "model.safetensors.index.json").read_text())
    assert {_pattern(n) for n in tiny["weight_map"]} == documented
