"""validate_checkpoint: a config that disagrees with the weights fails from headers alone, naming the field,
file or tensor — for every tensor the architecture needs (attention, norms, embeddings, head, FFN), in
every family, through the one entry `open_teacher`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moe2dense_core.arch import get_spec
from moe2dense_core.checkpoint import open_teacher, validate_checkpoint
from moe2dense_core.errors import CheckpointError, UnsupportedArchitectureError
from moe2dense_core.io import CheckpointReader
from tests.fixtures.tiny_moe import (
    FAMILIES,
    INDEX_FILE,
    add_tensor_on_disk,
    build_tiny_moe,
    edit_config,
    edit_shard,
    tiny_config,
)


class Built(dict):
    """family → a tiny checkpoint of it, built on first use (module-wide)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        self[family] = build_tiny_moe(family, self.root / family)
        return self[family]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("validate"))


def _copy(built: Built, family: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[family], tmp_path / family))


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
            r"lm_head\.weight.*has shape \[258, 64\].*implies \[258, 32\] \(Qwen3MoeForCausalLM",
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


def test_a_tensor_missing_from_the_checkpoint_is_named(built: dict[str, Path], tmp_path: Path) -> None:
    dst = Path(shutil.copytree(built["deepseek_v2"], tmp_path / "c"))
    name = "model.layers.2.mlp.shared_experts.down_proj.weight"
    edit_shard(dst, name, lambda tensors: tensors.pop(name))
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


NON_FFN = [
    "model.layers.1.self_attn.o_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.norm.weight",
    "model.embed_tokens.weight",
    "lm_head.weight",
]
"""Tensors outside the FFN blocks that every family has (lm_head only when the fixture's embeddings are
untied: Granite's are tied, as released)."""


def _missing(name: str) -> Callable[[Path], str]:
    """Remove `name` from its shard and from the index: stock transformers would initialise it randomly."""

    def corrupt(model_dir: Path) -> str:
        edit_shard(model_dir, name, lambda tensors: tensors.pop(name))
        layer = r" \(layer \d\)" if ".layers." in name else ""
        return (
            rf"{INDEX_FILE}: tensor '{re.escape(name)}'{layer} that config\.json implies "
            r"\(\w+ForCausalLM built from it\) is missing"
        )

    return corrupt


def _one_more_row(model_dir: Path) -> str:
    name = NON_FFN[0]
    rows, cols = CheckpointReader(model_dir).shape(name)
    shard = edit_shard(model_dir, name, lambda tensors: tensors.update({name: torch.zeros(rows + 1, cols)}))
    return (
        rf"'{re.escape(name)}' in {shard} has shape \[{rows + 1}, {cols}\], but config\.json implies "
        rf"\[{rows}, {cols}\] \(\w+ForCausalLM built from it\)"
    )


def _unlisted_shard_tensor(model_dir: Path) -> str:
    shard = edit_shard(model_dir, NON_FFN[0], lambda t: t.update(hidden=torch.zeros(2)), update_index=False)
    return rf"{shard}: holds tensor 'hidden', but the index .* does not list"


DEFECTS: dict[str, Callable[[Path], str]] = {
    **{f"missing_{name}": _missing(name) for name in NON_FFN},
    "wrong_shape": _one_more_row,
    "shard_tensor_the_index_leaves_out": _unlisted_shard_tensor,
}
"""defect → corrupt(model_dir) returning the regex the error must match."""


def _defects(family: str) -> list[str]:
    tied = tiny_config(family).get("tie_word_embeddings", False)
    return [defect for defect in DEFECTS if not (tied and defect == "missing_lm_head.weight")]


@pytest.mark.parametrize(("family", "defect"), [(f, d) for f in FAMILIES for d in _defects(f)])
def test_a_broken_checkpoint_is_refused_naming_the_tensor_in_every_family(
    built: Built, tmp_path: Path, family: str, defect: str
) -> None:
    dst = _copy(built, family, tmp_path)
    message = DEFECTS[defect](dst)
    with pytest.raises(CheckpointError, match=message):
        open_teacher(dst)


def test_every_family_validates_as_built(built: Built) -> None:
    for family in FAMILIES:
        with open_teacher(built[family]) as teacher:
            assert teacher.model_type == family


WRONG_ACTIVATION = {"hidden_act": "gelu", "swiglu_alpha": 1.0, "swiglu_limit": 5.0}
"""For each config field an Activation reads (`Activation.config_fields`), a value selecting another one."""


@pytest.mark.parametrize("family", FAMILIES)
def test_a_config_selecting_another_activation_is_refused_naming_the_field(
    built: Built, tmp_path: Path, family: str
) -> None:
    """The family's experts compute its declared activation only under these config values (transformers
    5.24 builds the experts' act_fn from them), so any other value is refused before anything runs."""
    for field in get_spec(family).activation.config_fields():
        value = WRONG_ACTIVATION[field]
        _with_config(built[family], tmp_path / field, **{field: value})
        with pytest.raises(
            CheckpointError, match=rf"config\.json field '{field}' = {re.escape(repr(value))}"
        ):
            open_teacher(tmp_path / field)


def test_an_unknown_tensor_the_student_would_inherit_is_refused(built: Built, tmp_path: Path) -> None:
    dst = _copy(built, "qwen3_moe", tmp_path)
    add_tensor_on_disk(dst, "model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8))
    with pytest.raises(
        CheckpointError,
        match=r"extra\.safetensors: tensor 'model\.layers\.0\.self_attn\.rotary_emb\.inv_freq' is not a "
        r"parameter of Qwen3MoeForCausalLM",
    ):
        open_teacher(dst)


def test_tied_embeddings_need_no_head_tensor(tmp_path: Path) -> None:
    """tie_word_embeddings: save_pretrained stores no lm_head.weight, and none is required; a stored one
    must still have the right shape."""
    src = build_tiny_moe("qwen3_moe", tmp_path / "tied", tie_word_embeddings=True)
    assert "lm_head.weight" not in CheckpointReader(src).names()
    assert open_teacher(src).dims.num_experts == 8
    add_tensor_on_disk(src, "lm_head.weight", torch.zeros(258, 32))
    with pytest.raises(
        CheckpointError, match=r"'lm_head\.weight' in extra\.safetensors has shape \[258, 32\]"
    ):
        open_teacher(src)
