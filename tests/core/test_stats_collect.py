"""collect_stats end to end on tiny checkpoints of every family: modes agree, one layer in memory at a
time, halves merge to the whole, bad batches fail before any forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import CheckpointError, UnsupportedArchitectureError
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.stats.collect import collect_layer_by_layer, collect_stats, validate_batches
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.layer_stats import SUM_FIELDS, StatsError
from moe2dense_core.stats.streamed_teacher import StreamedTeacher
from tests.fixtures.tiny_moe import FAMILIES, VOCAB_SIZE, build_tiny_moe, calibration_batches


def assert_stats_close(a: ExpertStats, b: ExpertStats, rtol: float) -> None:
    assert sorted(a.layers) == sorted(b.layers)
    for i in a.layers:
        for name in SUM_FIELDS:
            torch.testing.assert_close(
                getattr(a.layers[i], name),
                getattr(b.layers[i], name),
                rtol=rtol,
                atol=1e-12,
                msg=f"layer {i} {name}",
            )


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_by_layer_equals_in_memory(family: str, checkpoints: dict[str, Path]) -> None:
    batches = calibration_batches()
    in_memory = collect_stats(checkpoints[family], batches)
    streamed = collect_stats(checkpoints[family], batches, mode="layer_by_layer")
    assert_stats_close(in_memory, streamed, rtol=1e-6)
    dims = get_spec(family).dims(in_memory.config)
    assert sorted(in_memory.layers) == list(dims.moe_layers)
    for layer in in_memory.layers.values():
        assert float(layer.num_tokens) == 2 * 12 + 7
        assert float(layer.counts.sum()) == (2 * 12 + 7) * dims.top_k
        if family != "deepseek_v3":  # softmax probabilities sum to 1 per token (V3 scores are sigmoids)
            torch.testing.assert_close(layer.prob_sums.sum(), layer.num_tokens)
        assert (layer.shared_gate_sum > 0) == (family == "qwen2_moe")


def test_only_one_decoder_layer_holds_weights_at_a_time(checkpoints: dict[str, Path]) -> None:
    teacher = StreamedTeacher(CheckpointReader(checkpoints["deepseek_v2"]), dtype=torch.float32, device="cpu")
    seen: list[tuple[int, list[int]]] = []

    def record(index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            live = [
                j for j, layer in enumerate(teacher.layers) if any(not p.is_meta for p in layer.parameters())
            ]
            seen.append((index, live))

        return hook

    for index, layer in enumerate(teacher.layers):
        layer.register_forward_pre_hook(record(index))
    assert all(p.is_meta for layer in teacher.layers for p in layer.parameters())
    collect_layer_by_layer(teacher, get_spec("deepseek_v2"), calibration_batches())
    batches, layers = len(calibration_batches()), len(teacher.layers)
    capture_pass = [(i, []) for _ in range(batches) for i in range(layers)]  # recorders stand in for layers
    assert seen == capture_pass + [(i, [i]) for i in range(layers) for _ in range(batches)]
    assert all(p.is_meta for layer in teacher.layers for p in layer.parameters())
    assert teacher.model.base_model.embed_tokens.weight.is_meta  # its rows are read per batch instead


def test_two_halves_merged_equal_one_pass(checkpoints: dict[str, Path]) -> None:
    batches = calibration_batches()
    whole = collect_stats(checkpoints["qwen2_moe"], batches)
    merged = collect_stats(checkpoints["qwen2_moe"], batches[:1]).merge(
        collect_stats(checkpoints["qwen2_moe"], batches[1:])
    )
    assert_stats_close(whole, merged, rtol=1e-12)


def test_a_loaded_model_gives_the_same_statistics(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoints["mixtral"], dtype=torch.float32)
    from_model = collect_stats(model, calibration_batches())
    assert_stats_close(collect_stats(checkpoints["mixtral"], calibration_batches()), from_model, 1e-12)
    from_model.save(tmp_path)  # the loaded model's config serialises
    assert ExpertStats.load(tmp_path).digest() == from_model.digest()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 3), "must be an integer tensor"),
        (torch.zeros(6, dtype=torch.long), r"expected a non-empty 2-D tensor \[B, T\], got shape \(6,\)"),
        (torch.zeros(1, 0, dtype=torch.long), "non-empty"),
        (torch.full((1, 4), VOCAB_SIZE), rf"span \[{VOCAB_SIZE}, {VOCAB_SIZE}\], outside the vocabulary"),
        (torch.tensor([[3, -1]]), "outside the vocabulary"),
        ([[1, 2, 3]], "expected a torch.Tensor"),
    ],
)
def test_bad_batches_fail_before_any_forward(bad: object, message: str, checkpoints: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], dtype=torch.float32)
    forwards = []
    model.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    with pytest.raises(StatsError, match=rf"batch 1: .*{message}"):
        collect_stats(model, [calibration_batches()[0], bad])
    with pytest.raises(StatsError, match=rf"batch 1: .*{message}"):
        collect_stats(checkpoints["qwen3_moe"], [calibration_batches()[0], bad], mode="layer_by_layer")
    assert forwards == []


def test_no_batches_and_bad_modes_are_refused(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(StatsError, match="no calibration batches"):
        validate_batches([], VOCAB_SIZE)
    with pytest.raises(StatsError, match="mode must be"):
        collect_stats(checkpoints["qwen3_moe"], calibration_batches(), mode="streaming")  # type: ignore[arg-type]
    model = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], dtype=torch.float32)
    with pytest.raises(StatsError, match="pass its path"):
        collect_stats(model, calibration_batches(), mode="layer_by_layer")


def test_a_dense_model_is_refused_with_the_supported_families() -> None:
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(UnsupportedArchitectureError, match="'llama'.*qwen3_moe"):
        collect_stats(LlamaForCausalLM(config), [torch.zeros(1, 2, dtype=torch.long)])


@pytest.mark.parametrize("mode", ["in_memory", "layer_by_layer"])
def test_a_config_that_disagrees_with_the_weights_fails_before_loading(mode: str, tmp_path: Path) -> None:
    model_dir = build_tiny_moe("qwen3_moe", tmp_path / "teacher")
    config = json.loads((model_dir / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the shards hold 2 decoder layers
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\..* is missing from the checkpoint"):
        collect_stats(model_dir, calibration_batches(), mode=mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["in_memory", "layer_by_layer"])
def test_a_tensor_missing_outside_the_moe_blocks_is_an_error(mode: str, tmp_path: Path) -> None:
    model_dir = build_tiny_moe("qwen3_moe", tmp_path / "teacher")
    name = "model.layers.1.self_attn.q_proj.weight"
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = model_dir / index["weight_map"].pop(name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"self_attn\.q_proj\.weight"):
        collect_stats(model_dir, calibration_batches(), mode=mode)  # type: ignore[arg-type]


def test_progress_is_reported_per_batch_or_per_decoder_layer(checkpoints: dict[str, Path]) -> None:
    batches = calibration_batches()
    seen_batches: list[tuple[int, int]] = []
    collect_stats(checkpoints["deepseek_v2"], batches, on_progress=lambda d, t: seen_batches.append((d, t)))
    assert seen_batches == [(i, len(batches)) for i in range(1, len(batches) + 1)]
    seen_layers: list[tuple[int, int]] = []
    collect_stats(
        checkpoints["deepseek_v2"],
        batches,
        mode="layer_by_layer",
        on_progress=lambda d, t: seen_layers.append((d, t)),
    )
    config = json.loads((checkpoints["deepseek_v2"] / "config.json").read_text())
    last = max(get_spec("deepseek_v2").dims(config).moe_layers) + 1
    assert seen_layers == [(i, last) for i in range(1, last + 1)]
