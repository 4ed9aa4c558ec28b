"""validate_checkpoint: a config that disagrees with the weights fails from headers alone, naming the field,
file or tensor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import CheckpointError, UnsupportedArchitectureError
from moe2dense_core.io import CheckpointReader, validate_checkpoint
from tests.fixtures.tiny_moe import FAMILIES, build_tiny_moe


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validate")
    return {f: build_tiny_moe(f, root / f) for f in ("qwen3_moe", "deepseek_v2", "gpt_oss")}


def _with_config(src: Path, dst: Path, **changes: object) -> CheckpointReader:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return CheckpointReader(dst)


def test_unknown_model_type_lists_every_supported_family(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", model_type="jamba")
    with pytest.raises(UnsupportedArchitectureError, match="'jamba'") as err:
        validate_checkpoint(reader)
    assert all(family in str(err.value) for family in FAMILIES)


def test_fewer_experts_in_config_than_on_disk(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", num_local_experts=4)
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.0\.mlp\.gate\.weight'.*\[8, 64\].*implies \[4, 64\]"
    ):
        validate_checkpoint(reader)


def test_stray_expert_beyond_the_configured_count(built: dict[str, Path], tmp_path: Path) -> None:
    dst = Path(shutil.copytree(built["qwen3_moe"], tmp_path / "c"))
    stray = "model.layers.1.mlp.experts.8.up_proj.weight"
    save_file({stray: torch.zeros(32, 64)}, str(dst / "extra.safetensors"))
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    index["weight_map"][stray] = "extra.safetensors"
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"experts\.8\.up_proj\.weight' is routed expert 8.*declares 8 experts"
    ):
        validate_checkpoint(CheckpointReader(dst))


def test_more_experts_in_config_than_on_disk(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", num_local_experts=16)
    with pytest.raises(CheckpointError, match=r"router|gate\.weight.*shape \[8, 64\].*\[16, 64\]"):
        validate_checkpoint(reader)


def test_hidden_size_that_disagrees_with_the_tensors(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", hidden_size=32)
    with pytest.raises(CheckpointError, match=r"embed_tokens\.weight.*\[258, 64\].*\[258, 32\]"):
        validate_checkpoint(reader)


def test_expert_width_that_disagrees_with_the_tensors(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", moe_intermediate_size=48)
    with pytest.raises(
        CheckpointError, match=r"experts\.0\.gate_proj\.weight.*model-0000\d-of-0000\d\.safetensors"
    ):
        validate_checkpoint(reader)


def test_top_k_above_expert_count(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", num_experts_per_tok=9)
    with pytest.raises(CheckpointError, match="'num_experts_per_tok' = 9 exceeds"):
        validate_checkpoint(reader)


def test_missing_config_field_is_named(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", moe_intermediate_size=None)
    with pytest.raises(CheckpointError, match="'moe_intermediate_size'"):
        validate_checkpoint(reader)


def test_a_tensor_missing_from_the_index_is_named(built: dict[str, Path], tmp_path: Path) -> None:
    dst = Path(shutil.copytree(built["deepseek_v2"], tmp_path / "c"))
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.2.mlp.shared_experts.down_proj.weight"]
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.2\.mlp\.shared_experts\.down_proj\.weight' \(layer 2\)"
    ):
        validate_checkpoint(CheckpointReader(dst))


def test_leading_dense_layer_count_that_disagrees(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["deepseek_v2"], tmp_path / "c", first_k_dense_replace=2)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.gate_proj\.weight"):
        validate_checkpoint(reader)


def test_gpt_oss_expert_count_disagreeing_with_mxfp4_blocks(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["gpt_oss"], tmp_path / "c", num_local_experts=4)
    with pytest.raises(CheckpointError, match=r"router\.weight.*\[8, 64\].*\[4, 64\]"):
        validate_checkpoint(reader)


def test_gpt_oss_config_claiming_mxfp4_for_unquantised_weights(tmp_path: Path) -> None:
    src = build_tiny_moe("gpt_oss", tmp_path / "plain", mxfp4=False)
    reader = _with_config(src, tmp_path / "c", quantization_config={"quant_method": "mxfp4"})
    with pytest.raises(CheckpointError, match=r"gate_up_proj_blocks' \(layer 0\).*missing"):
        validate_checkpoint(reader)
    assert validate_checkpoint(CheckpointReader(src), get_spec("gpt_oss")).num_experts == 8
