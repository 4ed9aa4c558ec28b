"""Streamed routed experts (stats/streamed_experts.py): layer-by-layer collection never materialises a
routed expert parameter nor the embedding matrix, blocks respect their byte bound, and the streamed
experts compute what the in-memory experts module computes, whatever the block size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import StatsError
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.stats.collect import collect_layer_by_layer, collect_stats
from moe2dense_core.stats.layer_stats import SUM_FIELDS
from moe2dense_core.stats.streamed_experts import FLOAT32_BYTES, Block, ExpertBlocks, routed_forward
from moe2dense_core.stats.streamed_teacher import StreamedTeacher
from tests.fixtures.tiny_moe import FAMILIES, calibration_batches


def expert_bytes(config: dict, family: str) -> int:
    dims = get_spec(family).dims(config)
    return FLOAT32_BYTES * (3 * dims.expert_width * dims.hidden + 2 * dims.expert_width + dims.hidden)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_routed_expert_parameter_nor_the_embedding_matrix_is_ever_materialised(
    family: str, checkpoints: dict[str, Path]
) -> None:
    teacher = StreamedTeacher(CheckpointReader(checkpoints[family]), dtype=torch.float32, device="cpu")
    spec = get_spec(family)
    moe_layers = spec.dims(teacher.reader.config).moe_layers
    embedding = teacher.model.get_input_embeddings().weight
    seen: list[tuple[int, bool, bool]] = []

    def record(layer: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            seen.append((layer, all(p.is_meta for p in module.parameters()), embedding.is_meta))

        return hook

    experts = {layer: spec.experts_module(teacher.model, layer) for layer in moe_layers}
    for layer, module in experts.items():
        module.register_forward_pre_hook(record(layer))
    collect_layer_by_layer(teacher, spec, calibration_batches())
    assert seen == [(layer, True, True) for layer in moe_layers for _ in calibration_batches()]
    assert not any("forward" in vars(module) for module in experts.values())  # the streamed forward is gone


def test_blocks_hold_at_most_the_bound_and_only_the_wanted_ones_are_read(
    checkpoints: dict[str, Path],
) -> None:
    reader = CheckpointReader(checkpoints["qwen3_moe"])
    spec = get_spec("qwen3_moe")
    bound = 3 * expert_bytes(reader.config, "qwen3_moe") + 1  # room for 3 experts, not 4
    blocks = ExpertBlocks.of(reader, spec, 1, bound, torch.device("cpu"))
    seen: list[tuple[int, int]] = []

    def check(block: Block) -> None:
        seen.append((block.start, block.stop))
        assert sum(t.nbytes for t in block.tensors.values()) <= bound
        expected = spec.read_experts(reader, 1, list(range(block.start, block.stop)))
        assert torch.equal(block.canonical().gate, expected.gate) and torch.equal(
            block.canonical().down, expected.down
        )

    blocks.each(torch.float32, check)
    assert seen == [(0, 3), (3, 6), (6, 8)]
    seen.clear()
    blocks.each(torch.float32, check, wanted=torch.tensor([4, 5]))
    assert seen == [(3, 6)]
    assert ExpertBlocks.of(reader, spec, 1, 1, torch.device("cpu")).block_size == 1  # never below one expert
    with pytest.raises(StatsError, match="max_block_bytes must be a positive number of bytes, got 0"):
        ExpertBlocks.of(reader, spec, 1, 0, torch.device("cpu"))


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_experts_compute_what_the_experts_module_computes(
    family: str, checkpoints: dict[str, Path]
) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoints[family], dtype=torch.float32)
    reader = CheckpointReader(checkpoints[family])
    spec = get_spec(family)
    x = torch.randn(13, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    for layer in spec.dims(reader.config).moe_layers:
        experts, router = spec.experts_module(model, layer), spec.router_module(model, layer)
        with torch.no_grad():
            _, weights, indices = router(x)
            expected = experts(x, indices, weights)
            every = spec.module_expert_weights(experts).forward(x, spec.activation)  # [E, T, H]
        for bound in (1, 10**9):  # one expert per block, one block
            blocks = ExpertBlocks.of(reader, spec, layer, bound, torch.device("cpu"))
            torch.testing.assert_close(
                routed_forward(blocks, experts)(x, indices, weights), expected, rtol=1e-6, atol=1e-7
            )
            torch.testing.assert_close(blocks.all_outputs(x), every, rtol=1e-6, atol=1e-7)


def test_one_expert_per_block_gives_the_statistics_of_one_block(checkpoints: dict[str, Path]) -> None:
    for family in ("qwen2_moe", "gpt_oss"):
        whole = collect_stats(checkpoints[family], calibration_batches(), mode="layer_by_layer")
        single = collect_stats(
            checkpoints[family], calibration_batches(), mode="layer_by_layer", max_block_bytes=1
        )
        for index, layer in whole.layers.items():
            for name in SUM_FIELDS:
                reference, value = getattr(layer, name), getattr(single.layers[index], name)
                scale = float(reference.abs().max())
                assert float((value - reference).abs().max()) <= 1e-6 * scale, (family, index, name)
