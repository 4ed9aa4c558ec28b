"""validate_checkpoint: a config that disagrees with the weights fails from headers alone, naming the field,
file or tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import CheckpointError, UnsupportedArchitectureError
from moe2dense_core.io import CheckpointReader, validate_checkpoint
from tests.fixtures.tiny_moe import (
    FAMILIES,
    add_tensor_on_disk,
    build_tiny_moe,
    edit_config,
    edit_weight_map,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("validate")
    return {f: build_tiny_moe(f, root / f) for f in ("qwen3_moe", "deepseek_v2", "gpt_oss")}


def _with_config(src: Path, dst: Path, **changes: object) -> CheckpointReader:
    """A reader on a copy of `src` whose config.json is edited by `changes` (None deletes a field)."""
    shutil.copytree(src, dst)
    edit_config(dst, **changes)
    return CheckpointReader(dst)


def test_unknown_model_type_lists_every_supported_family(built: dict[str, Path], tmp_path: Path) -> None:
    reader = _with_config(built["qwen3_moe"], tmp_path / "c", model_type="jamba")
    with pytest.raises(UnsupportedArchitectureError, match="'jamba'") as err:
        validate_checkpoint(reader)
    assert all(family in str(err.value) for family in FAMILIES)


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        pytest.param(
            "qwen3_moe",
            dict(num_local_experts=4),
            r"'model\.layers\.0\.mlp\.gate\.weight'.*\[8, 64\].*implies \[4, 64\]",
            id="fewer_experts_in_config_than_on_disk",
        ),
        pytest.param(
            "qwen3_moe",
            dict(num_local_experts=16),
            r"'model\.layers\.0\.mlp\.gate\.weight'.*shape \[8, 64\].*implies \[16, 64\]",
            id="more_experts_in_config_than_on_disk",
        ),
        pytest.param(
            "qwen3_moe",
            dict(hidden_size=32),
            r"embed_tokens\.weight.*\[258, 64\].*\[258, 32\]",
            id="hidden_size_that_disagrees_with_the_tensors",
        ),
        pytest.param(
            "qwen3_moe",
            dict(moe_intermediate_size=48),
            r"experts\.0\.gate_proj\.weight.*model-0000\d-of-0000\d\.safetensors",
            id="expert_width_that_disagrees_with_the_tensors",
        ),
        pytest.param(
            "qwen3_moe",
            dict(num_experts_per_tok=9),
            "'num_experts_per_tok' = 9 exceeds",
            id="top_k_above_expert_count",
        ),
        pytest.param(
            "qwen3_moe",
            dict(moe_intermediate_size=None),
            "'moe_intermediate_size'",
            id="missing_config_field_is_named",
        ),
        pytest.param(
            "deepseek_v2",
            dict(first_k_dense_replace=2),
            r"model\.layers\.1\.mlp\.gate_proj\.weight",
            id="leading_dense_layer_count_that_disagrees",
        ),
        pytest.param(
            "gpt_oss",
            dict(num_local_experts=4),
            r"router\.weight.*\[8, 64\].*\[4, 64\]",
            id="gpt_oss_expert_count_disagreeing_with_mxfp4_blocks",
        ),
    ],
)
def test_a_config_that_disagrees_with_the_tensors_is_named(
    built: dict[str, Path], tmp_path: Path, family: str, changes: dict[str, object], message: str
) -> None:
    """A config.json edited by `changes` (None deletes the field) fails naming the field or tensor."""
    reader = _with_config(built[family], tmp_path / "c", **changes)
    with pytest.raises(CheckpointError, match=message):
        validate_checkpoint(reader)


def test_stray_expert_beyond_the_configured_count(built: dict[str, Path], tmp_path: Path) -> None:
    dst = Path(shutil.copytree(built["qwen3_moe"], tmp_path / "c"))
    stray = "model.layers.1.mlp.experts.8.up_proj.weight"
    add_tensor_on_disk(dst, stray, torch.zeros(32, 64))
    with pytest.raises(
        CheckpointError, match=r"experts\.8\.up_proj\.weight' is routed expert 8.*declares 8 experts"
    ):
        validate_checkpoint(CheckpointReader(dst))


def test_a_tensor_missing_from_the_index_is_named(built: dict[str, Path], tmp_path: Path) -> None:
    dst = Path(shutil.copytree(built["deepseek_v2"], tmp_path / "c"))
    edit_weight_map(
        dst, lambda weight_map: weight_map.pop("model.layers.2.mlp.shared_experts.down_proj.weight")
    )
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.2\.mlp\.shared_experts\.down_proj\.weight' \(layer 2\)"
    ):
        validate_checkpoint(CheckpointReader(dst))


def test_gpt_oss_config_claiming_mxfp4_for_unquantised_weights(tmp_path: Path) -> None:
    src = build_tiny_moe("gpt_oss", tmp_path / "plain", mxfp4=False)
    reader = _with_config(src, tmp_path / "c", quantization_config={"quant_method": "mxfp4"})
    with pytest.raises(CheckpointError, match=r"gate_up_proj_blocks' \(layer 0\).*missing"):
        validate_checkpoint(reader)
    assert validate_checkpoint(CheckpointReader(src), get_spec("gpt_oss")).num_experts == 8
