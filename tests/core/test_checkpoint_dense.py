"""check_dense_checkpoint: a written dense checkpoint is exactly its model's parameters (names and shapes vs
the model class built from its config.json on the meta device), and assemble never publishes one that is
not (stock transformers would fill a missing tensor with random weights and only log a warning)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from moe2dense_core import PlanConfig, assemble, build_plan, collect_stats
from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import get_spec
from moe2dense_core.checkpoint import check_dense_checkpoint, open_teacher
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io import CheckpointReader
from tests.fixtures.tiny_moe import add_tensor_on_disk, build_tiny_moe, edit_shard

FAMILIES = ["qwen3_moe", "olmoe", "deepseek_v2", "gpt_oss", "granitemoe"]
"""Dense targets of different kinds: stock dense (qwen3; granite with tied embeddings, so no lm_head), the
teacher's class with every layer dense (deepseek_v2, with its leading dense layer), one-expert MoE classes
stored per expert (olmoe) and in the fused layout (gpt_oss)."""
DOWN_PROJ = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """family → the dense student assemble wrote for a tiny teacher of that family."""
    root = tmp_path_factory.mktemp("dense")
    out = {}
    for family in FAMILIES:
        teacher = build_tiny_moe(family, root / f"{family}-teacher")
        batch = [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))]
        plan = build_plan(collect_stats(teacher, batch), PlanConfig())
        out[family] = assemble(teacher, plan, root / family).out_dir
    return out


@pytest.fixture
def dense_copy(converted: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    return Path(shutil.copytree(converted[request.param], tmp_path / "dense"))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_written_student_is_exactly_its_model(converted: dict[str, Path], family: str) -> None:
    check_dense_checkpoint(converted[family])


def _a_tensor(model_dir: Path) -> str:
    return sorted(json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"])[-1]


@pytest.mark.parametrize("dense_copy", FAMILIES, indirect=True)
def test_a_missing_tensor_is_named(dense_copy: Path) -> None:
    name = _a_tensor(dense_copy)
    edit_shard(dense_copy, name, lambda tensors: tensors.pop(name))
    with pytest.raises(CheckpointError, match=rf"not the parameters of \w+ .* missing: {re.escape(name)}"):
        check_dense_checkpoint(dense_copy)


@pytest.mark.parametrize("dense_copy", FAMILIES, indirect=True)
def test_an_unexpected_tensor_is_named_with_its_shard(dense_copy: Path) -> None:
    add_tensor_on_disk(dense_copy, "model.layers.0.mlp.experts.gate_proj", torch.zeros(2))
    with pytest.raises(
        CheckpointError, match=r"unexpected: model\.layers\.0\.mlp\.experts\.gate_proj \(extra\.safetensors\)"
    ):
        check_dense_checkpoint(dense_copy)


@pytest.mark.parametrize("dense_copy", FAMILIES, indirect=True)
def test_a_tensor_of_the_wrong_shape_is_named(dense_copy: Path) -> None:
    name = _a_tensor(dense_copy)
    shape = list(CheckpointReader(dense_copy).shape(name))
    shard = edit_shard(dense_copy, name, lambda tensors: tensors.update({name: torch.zeros(3, *shape)}))
    with pytest.raises(
        CheckpointError,
        match=rf"wrong shape: {re.escape(name)} \({shard}: \[3, {re.escape(str(shape)[1:])}, expected "
        rf"{re.escape(str(shape))}\)",
    ):
        check_dense_checkpoint(dense_copy)


class DropsDownProjection(type(get_spec("qwen3_moe"))):
    """The real Qwen3-MoE spec with one bug: layer 0's dense FFN is written without its down projection."""

    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        tensors = super().dense_ffn_tensors(layer, ffn)
        if layer == 0:
            del tensors[DOWN_PROJ]
        return tensors


def test_assemble_never_publishes_a_student_that_is_not_its_model(tmp_path: Path) -> None:
    teacher_dir = build_tiny_moe("qwen3_moe", tmp_path / "teacher")
    out = tmp_path / "dense"
    out.mkdir()
    (out / "config.json").write_text('{"earlier": true}')
    batch = [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))]
    with open_teacher(teacher_dir) as teacher:
        plan = build_plan(collect_stats(teacher, batch), PlanConfig())
        broken = dataclasses.replace(teacher, spec=DropsDownProjection())
        with pytest.raises(CheckpointError, match=rf"Qwen3ForCausalLM .* missing: {re.escape(DOWN_PROJ)}$"):
            assemble(broken, plan, out, overwrite=True)
    assert (out / "config.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "teacher"]
