"""Dense→dense pruning of the real tiny1m Llama: exactness, the importance ranking, size targeting, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.baselines import channel_importance, config_parameter_count, d2d_prune, prune_hidden_
from moe2dense_core.errors import CheckpointError, Moe2DenseError, UnsupportedArchitectureError
from moe2dense_core.evaluate import perplexity
from tests.core._eval_helpers import load_tiny1m, one_torch_thread, tiny1m_dir, tinystories_ids

PER_CHANNEL = 3 * 128 * 4  # gate row + up row + down column (hidden 128) in each of 4 layers
TEACHER_PARAMS = 935_040


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(teacher dir, teacher, tokenizer, calibration batches, held-out ids, result, pruned model)."""
    from transformers import AutoModelForCausalLM

    directory = tiny1m_dir(shared_data)
    teacher, tokenizer = load_tiny1m(directory)
    ids = tinystories_ids(shared_data, tokenizer)
    calib = [ids[i : i + 256].reshape(2, 128) for i in range(0, 1024, 256)]
    held_out = ids[1024:]
    target = TEACHER_PARAMS - 176 * PER_CHANNEL + 7  # width 176 plus a few parameters: closest width is 176
    out = tmp_path_factory.mktemp("d2d") / "student"
    result = d2d_prune(directory, calib, target, out)
    return directory, teacher, tokenizer, calib, held_out, result, AutoModelForCausalLM.from_pretrained(out)


def _with_channels_switched_off(teacher: torch.nn.Module, channels: list[torch.Tensor]) -> torch.nn.Module:
    """A copy of the teacher whose FFN channels channels[ℓ] (indices or a mask) in layer ℓ output nothing:
    their down_proj columns are zeroed."""
    model = copy.deepcopy(teacher)
    with torch.no_grad():
        for layer, off in zip(model.model.layers, channels, strict=True):
            layer.mlp.down_proj.weight[:, off] = 0.0
    return model


def test_writes_a_standard_checkpoint_at_the_nearest_width(setup) -> None:
    directory, _, _, _, _, result, pruned = setup
    assert result.ffn_width == 176 and pruned.config.intermediate_size == 176
    assert (
        result.num_params == TEACHER_PARAMS - 176 * PER_CHANNEL == sum(p.numel() for p in pruned.parameters())
    )
    assert result.teacher_params == TEACHER_PARAMS and result.calibration_tokens == 4 * 256
    out = Path(result.out_dir)
    record = json.loads((out / "baseline.json").read_text())
    assert record["kind"] == "d2d_prune" and record["ffn_width"] == 176
    assert (out / "tokenizer.json").read_bytes() == (directory / "tokenizer.json").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["student"], "no temporary folder left behind"


def test_pruning_equals_zeroing_the_dropped_down_proj_columns(setup) -> None:
    _, teacher, _, calib, held_out, _, pruned = setup
    importance = channel_importance(teacher, calib).ffn
    dropped = [
        torch.ones(352, dtype=torch.bool).index_fill_(0, s.topk(176).indices, False) for s in importance
    ]
    masked = _with_channels_switched_off(teacher, dropped)
    with torch.no_grad():
        inputs = held_out[None, :128]
        torch.testing.assert_close(
            pruned(input_ids=inputs).logits, masked(input_ids=inputs).logits, atol=1e-4, rtol=1e-5
        )


def test_importance_is_mean_absolute_ffn_activation(setup) -> None:
    _, teacher, _, calib, _, _, _ = setup
    captured = []
    layer = teacher.model.layers[2]
    handle = layer.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            for batch in calib:
                teacher(input_ids=batch)
    finally:
        handle.remove()
    x = torch.cat([c.reshape(-1, 128) for c in captured])
    with torch.no_grad():
        expected = (layer.mlp.act_fn(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)).abs().double().mean(0)
    importance = channel_importance(teacher, calib)
    assert importance.tokens == x.shape[0]
    torch.testing.assert_close(importance.ffn[2], expected, rtol=1e-6, atol=1e-9)


def test_keeping_important_channels_beats_keeping_the_others(setup) -> None:
    """Held-out perplexity: teacher < pruned by importance < pruned by *least* importance."""
    _, teacher, _, calib, held_out, _, pruned = setup
    importance = channel_importance(teacher, calib).ffn
    worst = _with_channels_switched_off(teacher, [scores.topk(176).indices for scores in importance])
    ppl = {
        name: perplexity(model, held_out, window=128, stride=64).perplexity
        for name, model in (("teacher", teacher), ("pruned", pruned), ("worst", worst))
    }
    assert ppl["teacher"] < ppl["pruned"] < ppl["worst"], ppl


def test_width_multiple_rounds_the_width(setup, tmp_path: Path) -> None:
    directory, _, _, calib, _, _, _ = setup
    result = d2d_prune(
        directory, calib[:1], TEACHER_PARAMS - 170 * PER_CHANNEL, tmp_path / "s", width_multiple=64
    )
    assert result.ffn_width == 192  # 182 wanted; 192 is the nearest multiple of 64


def test_unreachable_targets_and_bad_calibration_are_refused_and_nothing_is_written(
    setup, tmp_path: Path
) -> None:
    directory, _, _, calib, _, _, _ = setup
    floor = TEACHER_PARAMS - 351 * PER_CHANNEL
    assert config_parameter_count(directory) == TEACHER_PARAMS
    with pytest.raises(Moe2DenseError, match=f"below {floor:,}.*width pruning cannot reach it"):
        d2d_prune(directory, calib, floor - 1, tmp_path / "a")
    with pytest.raises(Moe2DenseError, match="not below the teacher's 935,040"):
        d2d_prune(directory, calib, TEACHER_PARAMS, tmp_path / "b")
    with pytest.raises(Moe2DenseError, match="no calibration tokens"):
        d2d_prune(directory, [], 700_000, tmp_path / "c")
    with pytest.raises(Moe2DenseError, match=r"calib_batches\[0\]: expected an integer token tensor"):
        d2d_prune(directory, [torch.zeros(2, 8)], 700_000, tmp_path / "d")
    assert not any(tmp_path.iterdir()), "nothing written when refused"


def test_non_empty_output_and_unsupported_families_are_refused(setup, tmp_path: Path) -> None:
    directory, _, _, calib, _, _, _ = setup
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not empty"):
        d2d_prune(directory, calib, 700_000, tmp_path / "taken")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(UnsupportedArchitectureError, match="not 'gpt2'"):
        d2d_prune(gpt2, calib, 700_000, tmp_path / "e")


def test_hidden_importance_sums_mean_absolute_rmsnorm_outputs(setup) -> None:
    _, teacher, _, calib, _, _, _ = setup
    norms = [
        m for layer in teacher.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    norms.append(teacher.model.norm)
    outputs: list[torch.Tensor] = []
    handles = [
        n.register_forward_hook(lambda _m, _a, out: outputs.append(out.reshape(-1, 128))) for n in norms
    ]
    try:
        with torch.no_grad():
            for batch in calib:
                teacher(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    expected = sum(o.abs().double().sum(0) for o in outputs) / (4 * 256)
    torch.testing.assert_close(channel_importance(teacher, calib).hidden, expected, rtol=1e-6, atol=1e-9)


def test_hidden_and_ffn_pruning_writes_a_loadable_checkpoint_of_the_counted_size(
    setup, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    directory, _, _, calib, held_out, _, _ = setup
    result = d2d_prune(directory, calib, 600_000, tmp_path / "s", hidden_size=96)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert (pruned.config.hidden_size, pruned.config.head_dim) == (96, 64)
    assert result.hidden_size == 96 and pruned.config.intermediate_size == result.ffn_width
    assert (
        result.num_params
        == sum(p.numel() for p in pruned.parameters())
        == config_parameter_count(tmp_path / "s")
    )
    per_channel_at_96 = 3 * 96 * 4
    assert abs(result.num_params - 600_000) <= per_channel_at_96 / 2
    assert torch.isfinite(pruned(input_ids=held_out[None, :64]).logits).all()


def test_keeping_important_hidden_channels_beats_keeping_the_others(setup) -> None:
    _, teacher, _, calib, held_out, _, _ = setup
    order = channel_importance(teacher, calib).hidden.argsort(descending=True)
    ppl = {}
    for name, kept in (("important", order[:96]), ("unimportant", order[-96:])):
        model = copy.deepcopy(teacher)
        prune_hidden_(model, kept.sort().values)
        ppl[name] = perplexity(model, held_out, window=128, stride=64).perplexity
    assert ppl["important"] < ppl["unimportant"], ppl


def test_hidden_pruning_keeps_tied_embeddings_tied() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    prune_hidden_(model, torch.arange(0, 32, 2))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (64, 16) and model.config.head_dim == 8
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_bad_hidden_targets_are_refused(setup, tmp_path: Path) -> None:
    directory, _, _, calib, _, _, _ = setup
    with pytest.raises(Moe2DenseError, match=r"hidden_size must be in \[1, 128\], got 129"):
        d2d_prune(directory, calib, 600_000, tmp_path / "a", hidden_size=129)
    with pytest.raises(Moe2DenseError, match="above .* the size at full FFN width and hidden_size 32"):
        d2d_prune(directory, calib, 900_000, tmp_path / "b", hidden_size=32)
