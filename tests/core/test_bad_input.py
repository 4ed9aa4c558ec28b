"""Bad input through the public API: a clear error naming the culprit, raised before any calibration
(no batch is read), and nothing already in out_dir is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from moe2dense_core import (
    CheckpointError,
    ConversionPlan,
    LayerPlan,
    PlanConfig,
    PlanError,
    UnsupportedArchitectureError,
    assemble,
    collect_stats,
    convert,
)
from moe2dense_core.assembly import OutputDirError
from tests.fixtures.tiny_moe import build_tiny_moe, edit_config, edit_shard, edit_weight_map

NUM_EXPERTS, TOP_K, EXPERT_WIDTH, NUM_LAYERS = 8, 2, 32, 2


class TrackedBatches:
    """Calibration batches that remember whether anyone started reading them."""

    def __init__(self) -> None:
        self.read = False

    def __iter__(self):
        self.read = True
        yield torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def good_teacher(tmp_path_factory) -> Path:
    return build_tiny_moe("qwen3_moe", tmp_path_factory.mktemp("good"), num_experts=NUM_EXPERTS, top_k=TOP_K)


@pytest.fixture
def teacher(good_teacher, tmp_path) -> Path:
    """A private copy of the good teacher, free to corrupt."""
    return Path(shutil.copytree(good_teacher, tmp_path / "teacher"))


@pytest.fixture
def previous_output(tmp_path) -> Path:
    """An out_dir holding an earlier conversion, which a failed run must leave intact."""
    out = tmp_path / "dense"
    out.mkdir()
    (out / "config.json").write_text('{"earlier": true}')
    return out


def prune_plan(**changes) -> ConversionPlan:
    layer = {"kept": [0, 1], "scores": [1.0] * NUM_EXPERTS, "groups": [[0], [1]]}
    layer |= {"merge_weights": [[1.0], [1.0]], "scales": [0.5, 0.5]}
    layer |= changes.pop("layer", {})
    plan = {
        "model_type": "qwen3_moe",
        "num_experts": NUM_EXPERTS,
        "top_k": TOP_K,
        "expert_width": EXPERT_WIDTH,
    }
    plan |= {"target_width": TOP_K * EXPERT_WIDTH, "config": PlanConfig(num_selected=TOP_K)}
    plan |= {"layers": [LayerPlan(layer=i, **layer) for i in range(NUM_LAYERS)]}
    return ConversionPlan(**(plan | changes))


def first_shard(model_dir: Path) -> Path:
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return model_dir / sorted(set(index["weight_map"].values()))[0]


def truncate(model_dir: Path) -> str:
    shard = first_shard(model_dir)
    shard.write_bytes(shard.read_bytes()[:-100])
    return f"{shard.name}.*truncated"


def corrupt_header(model_dir: Path) -> str:
    shard = first_shard(model_dir)
    data = bytearray(shard.read_bytes())
    data[8:24] = b"\xff" * 16
    shard.write_bytes(bytes(data))
    return f"{shard.name}.*corrupt"


def drop_from_index(model_dir: Path) -> str:
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    edit_weight_map(model_dir, lambda weight_map: weight_map.pop(name))
    return name.replace(".", r"\.")


def more_experts_in_config(model_dir: Path) -> str:
    edit_config(model_dir, num_experts=16)
    return r"gate.weight.* has shape \[8, 64\].*implies \[16, 64\]"


def wider_experts_in_config(model_dir: Path) -> str:
    edit_config(model_dir, moe_intermediate_size=48)
    return r"shape \[32, 64\].*implies \[48, 64\]"


def unknown_model_type(model_dir: Path) -> str:
    edit_config(model_dir, model_type="not_a_moe")
    return "unknown MoE family 'not_a_moe'; known:.*qwen3_moe"


ATTENTION = "model.layers.1.self_attn.o_proj.weight"


def drop_attention_tensor(model_dir: Path) -> str:
    """Gone from its shard and from the index: stock transformers would initialise it randomly."""
    edit_shard(model_dir, ATTENTION, lambda tensors: tensors.pop(ATTENTION))
    return rf"{re.escape(ATTENTION)}' \(layer 1\) that config\.json implies .* is missing"


def wrong_attention_shape(model_dir: Path) -> str:
    edit_shard(model_dir, ATTENTION, lambda tensors: tensors.update({ATTENTION: torch.zeros(64, 65)}))
    return rf"{re.escape(ATTENTION)}' in .* has shape \[64, 65\], but config\.json implies \[64, 64\]"


def shard_tensor_not_in_index(model_dir: Path) -> str:
    shard = edit_shard(
        model_dir, ATTENTION, lambda tensors: tensors.update(unlisted=torch.zeros(4)), update_index=False
    )
    return rf"{shard}: holds tensor 'unlisted', but the index .* does not list it"


def tokenizer_beyond_the_vocabulary(model_dir: Path) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["<beyond>"])
    tokenizer.save_pretrained(model_dir)
    return r"tokenizer\.json: the tokenizer has 259 tokens but config\.json vocab_size is 258"


CHECKPOINT_DEFECTS = {
    "truncated_shard": (truncate, CheckpointError),
    "corrupt_shard_header": (corrupt_header, CheckpointError),
    "tensor_missing_from_index": (drop_from_index, CheckpointError),
    "attention_tensor_missing": (drop_attention_tensor, CheckpointError),
    "attention_tensor_of_the_wrong_shape": (wrong_attention_shape, CheckpointError),
    "shard_tensor_not_in_the_index": (shard_tensor_not_in_index, CheckpointError),
    "tokenizer_beyond_the_vocabulary": (tokenizer_beyond_the_vocabulary, CheckpointError),
    "config_declares_more_experts": (more_experts_in_config, CheckpointError),
    "config_disagrees_with_expert_shapes": (wider_experts_in_config, CheckpointError),
    "unknown_model_type": (unknown_model_type, UnsupportedArchitectureError),
}


@pytest.mark.parametrize("defect", CHECKPOINT_DEFECTS)
def test_collect_stats_refuses_a_bad_checkpoint_before_calibrating(defect, teacher):
    corrupt, error = CHECKPOINT_DEFECTS[defect]
    message = corrupt(teacher)
    batches = TrackedBatches()
    with pytest.raises(error, match=message):
        collect_stats(teacher, batches)
    assert not batches.read


@pytest.mark.parametrize("defect", CHECKPOINT_DEFECTS)
def test_convert_refuses_a_bad_checkpoint_before_calibrating_and_keeps_out_dir(
    defect, teacher, previous_output
):
    corrupt, error = CHECKPOINT_DEFECTS[defect]
    message = corrupt(teacher)
    batches = TrackedBatches()
    with pytest.raises(error, match=message):
        convert(teacher, batches, previous_output, PlanConfig(), overwrite=True)
    assert not batches.read
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


@pytest.mark.parametrize("defect", CHECKPOINT_DEFECTS)
def test_assemble_refuses_a_bad_checkpoint_and_keeps_out_dir(defect, teacher, previous_output):
    corrupt, error = CHECKPOINT_DEFECTS[defect]
    message = corrupt(teacher)
    with pytest.raises(error, match=message):
        assemble(teacher, prune_plan(), previous_output, overwrite=True)
    assert sorted(p.name for p in previous_output.parent.iterdir()) == ["dense", "teacher"]
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


def test_convert_refuses_an_uncached_hub_id_offline_before_calibrating(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: nothing leaves the machine
    batches = TrackedBatches()
    with pytest.raises(
        CheckpointError, match=r"example-org/absent-moe@main: .* the Hub is offline \(HF_HUB_OFFLINE=1\)"
    ):
        convert("example-org/absent-moe", batches, tmp_path / "dense")
    assert not batches.read
    assert not (tmp_path / "dense").exists()


def to_pickle(model_dir: Path) -> None:
    """The same weights as one pytorch_model.bin (torch.save of the state dict), safetensors removed."""
    index = model_dir / "model.safetensors.index.json"
    state = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(model_dir / shard))
        (model_dir / shard).unlink()
    index.unlink()
    torch.save(state, model_dir / "pytorch_model.bin")


def test_convert_refuses_pickle_weights_unless_allowed_then_loads_them_weights_only(
    teacher, good_teacher, tmp_path
):
    to_pickle(teacher)
    batches = TrackedBatches()
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*allow_pickle=True.*weights_only=True"):
        convert(teacher, batches, tmp_path / "dense")
    assert not batches.read
    from_pickle = convert(teacher, TrackedBatches(), tmp_path / "dense", allow_pickle=True)
    from_safetensors = convert(good_teacher, TrackedBatches(), tmp_path / "reference")
    assert from_pickle.shard_digests == from_safetensors.shard_digests


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PlanConfig(num_selected=1, grouping="output_cluster"), "num_selected: K = 1 < k = 2"),
        (PlanConfig(num_selected=9, grouping="output_cluster"), "num_selected: K = 9 > E = 8"),
    ],
    ids=["K_below_k", "K_above_E"],
)
def test_convert_refuses_an_impossible_plan_request_before_calibrating(
    config, message, teacher, previous_output
):
    batches = TrackedBatches()
    with pytest.raises(PlanError, match=message):
        convert(teacher, batches, previous_output, config, overwrite=True)
    assert not batches.read
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


def test_convert_refuses_a_non_empty_out_dir_before_calibrating(teacher, previous_output):
    batches = TrackedBatches()
    with pytest.raises(OutputDirError, match="not empty; pass overwrite=True"):
        convert(teacher, batches, previous_output)
    assert not batches.read
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (prune_plan(num_experts=16), "plan.num_experts is 16 but the checkpoint has 8"),
        (prune_plan(model_type="mixtral"), "plan.model_type is 'mixtral'"),
        (
            prune_plan(layer={"kept": [0, 8], "groups": [[0], [8]]}),
            r"kept experts \[8\] are out of range \[0, 8\)",
        ),
        (prune_plan(layer={"groups": [[0], [2]]}), "not a partition of the kept experts"),
        (
            prune_plan(layer={"merge_weights": [[1.0], [0.5]]}),
            r"merge_weights \[0.5\] must be non-negative and sum to 1",
        ),
        (prune_plan(layer={"shared_scale": 1.0}), "has no shared experts"),
        (prune_plan(target_width=40), "target_width is 40 but the widest student layer needs 64"),
        (prune_plan(layers=[]), r"covers layers \[\] but the checkpoint's MoE layers are \[0, 1\]"),
    ],
    ids=[
        "other_E",
        "other_family",
        "kept_out_of_range",
        "groups_not_partition",
        "merge_weights_not_convex",
        "shared_scale",
        "too_narrow",
        "no_layers",
    ],
)
def test_assemble_refuses_a_plan_that_does_not_fit_the_checkpoint(plan, message, teacher, previous_output):
    with pytest.raises(PlanError, match=message):
        assemble(teacher, plan, previous_output, overwrite=True)
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


def test_assemble_refuses_to_overwrite_without_permission(teacher, previous_output):
    with pytest.raises(OutputDirError, match="not empty; pass overwrite=True"):
        assemble(teacher, prune_plan(), previous_output)
    assert (previous_output / "config.json").read_text() == '{"earlier": true}'


def test_assemble_with_overwrite_replaces_the_previous_output(teacher, previous_output):
    assemble(teacher, prune_plan(), previous_output, overwrite=True)
    assert json.loads((previous_output / "config.json").read_text())["model_type"] == "qwen3"
