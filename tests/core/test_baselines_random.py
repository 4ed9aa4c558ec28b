"""Random-init baselines: same architecture from scratch, and random FFN + the teacher's other weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe2dense_core.baselines import count_parameters, random_ffn_student, random_init_student
from moe2dense_core.errors import CheckpointError
from tests.core._eval_helpers import load_tiny1m, one_torch_thread, tiny1m_dir


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def _dense_config(**overrides):
    from transformers import Qwen3Config

    base = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=False,
    )
    return Qwen3Config(**{**base, **overrides})


@pytest.fixture(scope="module")
def moe_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3-MoE (4 experts of width 16, top-2) saved in the released per-expert format."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("moe") / "teacher"
    Qwen3MoeForCausalLM(config).save_pretrained(path)
    return path


def test_random_init_is_the_same_architecture_seeded_and_leaves_global_rng_alone() -> None:
    config = _dense_config()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = random_init_student(config, seed=0)
    assert torch.equal(torch.rand(3), expected_next), "global RNG must be untouched"
    b, c = random_init_student(config, seed=0), random_init_student(config, seed=1)
    assert type(a).__name__ == "Qwen3ForCausalLM" and a.config.intermediate_size == 32
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(
        a.model.layers[0].self_attn.q_proj.weight, c.model.layers[0].self_attn.q_proj.weight
    )


def test_random_init_from_a_checkpoint_folder_matches_its_size(shared_data: Path) -> None:
    directory = tiny1m_dir(shared_data)
    teacher, _ = load_tiny1m(directory)
    student = random_init_student(directory, seed=0)
    assert count_parameters(student) == count_parameters(teacher) == 935_040
    assert not torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_random_ffn_copies_everything_but_the_ffn_from_an_moe_teacher(moe_teacher_dir: Path) -> None:
    """The paper's case: MoE teacher → dense student of width k·I, teacher attention/embeddings/norms."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(moe_teacher_dir)
    config = _dense_config()
    student = random_ffn_student(moe_teacher_dir, config, seed=5)
    fresh = random_init_student(config, seed=5)
    teacher_params = dict(teacher.named_parameters())
    for (name, p), (fresh_name, q) in zip(student.named_parameters(), fresh.named_parameters(), strict=True):
        assert name == fresh_name
        if ".mlp." in name:
            assert torch.equal(p, q), f"{name} must be the seeded random init"
        else:
            assert torch.equal(p, teacher_params[name]), f"{name} must be the teacher's"


def test_random_ffn_with_a_narrower_ffn_than_the_dense_teacher(shared_data: Path) -> None:
    directory = tiny1m_dir(shared_data)
    teacher, _ = load_tiny1m(directory)
    config = teacher.config.__class__.from_dict({**teacher.config.to_dict(), "intermediate_size": 100})
    student = random_ffn_student(directory, config)
    assert student.model.layers[0].mlp.gate_proj.weight.shape == (100, 128)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(
        student.model.layers[3].self_attn.o_proj.weight, teacher.model.layers[3].self_attn.o_proj.weight
    )


def test_mismatched_attention_is_refused_naming_the_tensors(moe_teacher_dir: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"shape mismatch: \['model.embed_tokens.weight \(student \(128, 64\)"
    ):
        random_ffn_student(moe_teacher_dir, _dense_config(hidden_size=64))
    with pytest.raises(CheckpointError, match=r"missing: \['model.layers.2.self_attn"):
        random_ffn_student(moe_teacher_dir, _dense_config(num_hidden_layers=3))


def test_quantised_teacher_tensors_are_refused(shared_data: Path, tmp_path: Path) -> None:
    """An FP8 tensor would be copied as raw codes without its scales: refuse, naming it."""
    import shutil

    from safetensors.torch import save_file

    directory = tiny1m_dir(shared_data)
    teacher, _ = load_tiny1m(directory)
    state = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    name = "model.layers.1.self_attn.k_proj.weight"
    state[name] = state[name].to(torch.float8_e4m3fn)
    quantised = tmp_path / "fp8"
    quantised.mkdir()
    shutil.copy(directory / "config.json", quantised / "config.json")
    save_file(state, str(quantised / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"dequantise first\): \['{name} \(torch.float8_e4m3fn\)'\]"):
        random_ffn_student(quantised, teacher.config)
