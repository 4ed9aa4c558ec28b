"""Block-FP8 weights (DeepSeek-V3/R1 release format): dequantisation equals transformers', and a spec reads an
FP8-stored checkpoint as the dequantised values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

from moe2dense_core import PlanConfig, assemble, build_plan, collect_stats
from moe2dense_core.arch import get_spec
from moe2dense_core.checkpoint import open_teacher
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io import CheckpointReader
from moe2dense_core.io.fp8 import dequantize_fp8_blocks
from tests.fixtures.tiny_moe import build_tiny_moe


def _fp8(shape: tuple[int, ...], block: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator).to(torch.float8_e4m3fn)
    grid = (*shape[:-2], -(-shape[-2] // block[0]), -(-shape[-1] // block[1]))
    return weight, torch.rand(grid, generator=generator) + 0.5


@pytest.mark.parametrize("shape", [(256, 384), (200, 300), (3, 130, 129)])
def test_dequantize_matches_transformers(shape: tuple[int, ...]) -> None:
    weight, scale = _fp8(shape, (128, 128))
    ours = dequantize_fp8_blocks(weight, scale)
    theirs = _dequantize_fp8_weight(weight, scale, [128, 128], torch.float32)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, theirs)


def test_scale_grid_that_does_not_fit_is_named() -> None:
    weight, scale = _fp8((256, 256), (128, 128))
    with pytest.raises(CheckpointError, match=r"q_a_proj\.weight: FP8 scale_inv shape \(2, 3\)"):
        dequantize_fp8_blocks(weight, torch.ones(2, 3), name="q_a_proj.weight")


def fp8_deepseek_v3(model_dir: Path) -> dict[str, torch.Tensor]:
    """A tiny DeepSeek-V3 stored like the release: 2-D projection weights F8_E4M3 + weight_scale_inv (block
    [16, 16]), quantization_config in config.json. Returns name → the dequantised float32 weight."""
    build_tiny_moe("deepseek_v3", model_dir)
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    expected: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(model_dir / shard)
        out = {}
        for name, tensor in tensors.items():
            if tensor.dim() == 2 and name.endswith("proj.weight"):
                fp8, scale = _fp8(tuple(tensor.shape), (16, 16), seed=len(expected))
                out[name], out[name + "_scale_inv"] = fp8, scale
                index["weight_map"][name + "_scale_inv"] = shard
                expected[name] = dequantize_fp8_blocks(fp8, scale, (16, 16))
            else:
                out[name] = tensor
        save_file(out, str(model_dir / shard))
    index_path.write_text(json.dumps(index))
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [16, 16]}
    (model_dir / "config.json").write_text(json.dumps(config))
    return expected


def test_spec_reads_an_fp8_deepseek_v3_checkpoint_dequantised(tmp_path: Path) -> None:
    model_dir = tmp_path / "v3"
    expected = fp8_deepseek_v3(model_dir)
    spec, reader = get_spec("deepseek_v3"), CheckpointReader(model_dir)
    experts = spec.read_experts(reader, 1, [0, 7])
    assert torch.equal(experts.gate[1], expected["model.layers.1.mlp.experts.7.gate_proj.weight"])
    assert torch.equal(experts.down[0], expected["model.layers.1.mlp.experts.0.down_proj.weight"])
    shared = spec.read_shared(reader, 2)
    assert torch.equal(shared.up[0], expected["model.layers.2.mlp.shared_experts.up_proj.weight"])
    assert torch.equal(
        spec.read_dense_mlp(reader, 0).gate[0], expected["model.layers.0.mlp.gate_proj.weight"]
    )
    attention = "model.layers.0.self_attn.q_a_proj.weight"
    assert torch.equal(spec.read_tensor(reader, attention), expected[attention])
    assert spec.rename_for_dense(attention + "_scale_inv") is None
    assert spec.rename_for_dense(attention) == attention
    assert "quantization_config" not in spec.dense_config(reader.config, 96)


def test_an_fp8_teacher_validates_and_its_student_gets_the_dequantised_weights(tmp_path: Path) -> None:
    """The student has no quantization_config: every teacher tensor it inherits (attention projections)
    must be written dequantised, never as raw F8 bytes that a loader would read without their scales."""
    model_dir = tmp_path / "v3"
    expected = fp8_deepseek_v3(model_dir)
    with open_teacher(model_dir) as teacher:  # the …_scale_inv partners are known to the spec
        batch = [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))]
        plan = build_plan(collect_stats(teacher, batch), PlanConfig())
        out = assemble(teacher, plan, tmp_path / "dense").out_dir
    reader = CheckpointReader(out)
    attention = "model.layers.0.self_attn.q_a_proj.weight"
    assert torch.equal(reader.get(attention), expected[attention])
    assert not [n for n in reader.names() if n.endswith("_scale_inv") or reader.dtype(n).itemsize == 1]
